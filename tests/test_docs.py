"""The documentation site: built as ``mkdocs build --strict`` does (a broken link, a missing
page or any warning fails), then Chromium opens the built site through playwright. The notebooks are
rendered as they are (no execution here: ``make docs`` renders executed copies)."""

import functools
import http.server
import json
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with ``--strict``, in this process (the package is imported already)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    out = tmp_path_factory.mktemp("site")
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("mkdocs").addHandler(handler)
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        config = load_config(str(ROOT / "mkdocs.yml"), strict=True, site_dir=str(out))
        config.plugins.on_startup(command="build", dirty=False)
        try:
            build(config)
        except BaseException as err:  # mkdocs stops a strict build with an exception
            pytest.fail(f"mkdocs build --strict failed: {err!r}; warnings: {warnings}")
        finally:
            config.plugins.on_shutdown()
    finally:
        os.chdir(cwd)
        logging.getLogger("mkdocs").removeHandler(handler)
    assert warnings == []
    return out


def test_every_page_is_built_from_the_sources(site):
    from rdfcil.config import FIELD_NAMES
    from rdfcil.methods import METHODS
    for page in ("getting-started", "datasets", "notebooks", "methods", "methods/inversion", "methods/statistics",
                 "methods/analytic", "methods/drift", "fidelity", "config", "reproducing", "watching", "results",
                 "performance", "reliability", "contributing", "api", "cli", "notebooks/reproduce",
                 "notebooks/02_model_inversion"):
        assert (site / page / "index.html").is_file(), page
    config = (site / "config" / "index.html").read_text()
    assert all(f"<code>{key}</code>" in config for key in FIELD_NAMES)
    methods = (site / "methods" / "index.html").read_text()
    assert all(f"<code>{name}</code>" in methods for name in METHODS)
    cli = (site / "cli" / "index.html").read_text()
    assert all(f"<code>{command}</code>" in cli for command in ("run", "list", "bench-accuracy", "bench-speed", "check"))
    inversion = (site / "methods" / "inversion" / "index.html").read_text()
    assert 'id="rdfcil.methods.rdfcil.RDFCIL"' in inversion and 'id="rdfcil.methods.abd.ABD"' in inversion


def serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_site_in_a_browser(site):
    """Search, a figure, the API page of rdfcil.run, and no console error on any page visited."""
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the docs extra)")
    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    errors = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page()
            page.on("console", lambda m: errors.append((page.url, m.text)) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append((page.url, str(e))))

            page.goto(base + "/")
            page.fill("input.md-search__input", "relational knowledge distillation")
            page.wait_for_selector(".md-search-result__item", timeout=20000)
            results = page.inner_text(".md-search-result")
            assert "Model inversion" in results and "relational knowledge distillation" in results.lower()

            page.goto(base + "/results/")
            figure = page.locator("img[src$='accuracy_curves.png']").first
            figure.scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete", arg=figure.element_handle(), timeout=10000)
            assert figure.evaluate("img => img.naturalWidth") > 0

            page.goto(base + "/api/")
            heading = page.locator("[id='rdfcil.run']")
            assert heading.count() == 1 and "rdfcil.run" in heading.inner_text()

            page.goto(base + "/notebooks/reproduce/")
            assert "Reproduce" in page.title()
            browser.close()
    finally:
        server.shutdown()
    assert errors == []


def test_a_new_method_appears_on_its_family_page_or_the_overview(monkeypatch):
    """The methods pages are filled from the registry: a method of a known family lands on that
    family's page (its docstring through mkdocstrings), one without a family on the overview."""
    from rdfcil import docgen
    from rdfcil.methods import METHODS, Method

    class Statistic(Method):
        """Nearest class mean on frozen features."""
        name, label, family = "toy-ncm", "Toy NCM", "statistics"

    class Unsorted(Method):
        """A method that names no family."""
        name, label = "toy-other", "Toy other"

    assert "toy-ncm" not in docgen.family_section(["statistics"])
    assert docgen.family_section(["nothing"]) == "No method of this family is registered in this version of the lab.\n"
    monkeypatch.setitem(METHODS, "toy-ncm", Statistic)
    monkeypatch.setitem(METHODS, "toy-other", Unsorted)
    section = docgen.fill("<!-- rdfcil: family statistics -->")
    assert f"### Toy NCM (`--method toy-ncm`)\n\n::: {Statistic.__module__}.{Statistic.__qualname__}" in section
    assert "toy-other" not in section
    assert f"::: {Unsorted.__module__}.{Unsorted.__qualname__}" in docgen.fill("<!-- rdfcil: other-methods -->")
    table = docgen.methods_table("docs/")
    assert ("| Toy NCM | `toy-ncm` | [statistics](docs/methods/statistics.md) | Nearest class mean on frozen features. | "
            "Nearest class mean on frozen features. |") in table
    assert "| Toy other | `toy-other` | other | A method that names no family. |" in table


def test_the_bench_tables_put_each_dataset_beside_the_others(monkeypatch, tmp_path):
    from rdfcil import docgen
    row = lambda m, final, std, avg, s, c: {"method": m, "split": "5 × 2", "over": "3 seeds", "final_mean": final,  # noqa: E731
                                            "seeds": [0, 1, 2], "class_orders": [0],
                                            "final_std": std, "avg_mean": avg, "avg_std": 1.0, "seconds_mean": s,
                                            "classifier": c, "provenance": "Made at commit abc."}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "accuracy.json").write_text(json.dumps([row("finetune", 19.444, 0.5, 45.0, 100.0, "linear head"),
                                                              row("fecam", 54.26, None, 69.25, 25.0, "FeCAM (Mahalanobis)")]))
    monkeypatch.setattr(docgen, "BENCHES", {"digits": tmp_path / "d", "fashion-mnist": tmp_path / "absent"})
    table = docgen.bench_table().splitlines()
    assert table[0] == "| method | family | classifier | final, digits | avg. incr., digits |"
    assert table[2] == "| Finetune | bound | linear head | 19.44 ± 0.50 | 45.00 ± 1.00 |"
    assert table[3] == "| FeCAM | statistics | FeCAM (Mahalanobis) | 54.26 | 69.25 ± 1.00 |"
    assert table[-1] == "digits (5 × 2, 3 seeds): Made at commit abc."  # Finetune (bound) ranks before FeCAM
    times = docgen.bench_times().splitlines()
    assert times[2:] == ["| Finetune | 100 | 1.00 |", "| FeCAM | 25 | 0.25 |"]
