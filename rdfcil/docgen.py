"""The generated parts of the documentation and the README, built from the sources: the method
registry, the config fields' metadata, the command line's argument parser and the committed
results table. ``docs/hooks.py`` puts them into the site's pages at build time;
``python -m rdfcil.docgen readme`` rewrites the README's generated sections in place.

A page asks for a part with a marker line, ``<!-- rdfcil: NAME -->`` (e.g. ``methods``,
``config``, ``cli``, ``results``, ``family inversion``); :func:`fill` replaces each marker with
its part.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_TABLE = ROOT / "figures" / "digits" / "reproduction.md"
# The committed accuracy benchmarks (``make bench-accuracy``): dataset -> its table's folder.
BENCHES = {"digits": ROOT / "figures" / "bench" / "digits-quick",
           "fashion-mnist": ROOT / "figures" / "bench" / "fashion-mnist-quick"}
BENCH_TITLES = {"digits": "digits", "fashion-mnist": "Fashion-MNIST"}

# The families of the documentation's methods pages: key -> (page, title). A method names its
# family in its class (``Method.family``); one whose family is none of these is listed with its
# docstring on the methods overview.
FAMILIES = {
    "inversion": ("methods/inversion.md", "Model inversion"),
    "bound": ("methods/inversion.md", "Model inversion"),
    "statistics": ("methods/statistics.md", "Class statistics"),
    "analytic": ("methods/analytic.md", "Analytic learning"),
    "drift": ("methods/drift.md", "Drift compensation"),
}
MARKER = re.compile(r"^<!-- rdfcil: ([a-z -]+) -->$", re.M)


# --------------------------------------------------------------------------- methods

def _text(text: str) -> str:
    """Plain text for a Markdown table cell: no column breaks, no HTML tags."""
    return str(text).replace("|", "/").replace("<", "&lt;").replace(">", "&gt;")


def _first_line(cls) -> str:
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def method_rows() -> list[dict]:
    """Every registered method: name, label, family, paper, what is as published, its class path."""
    from .methods import METHODS
    rows = []
    for name, cls in METHODS.items():
        rows.append({"name": name, "label": cls.label or name, "family": cls.family or "other",
                     "citation": cls.citation or _first_line(cls), "faithful": cls.faithful or _first_line(cls),
                     "path": f"{cls.__module__}.{cls.__qualname__}"})
    return rows


def _family_link(family: str, prefix: str) -> str:
    if family not in FAMILIES:
        return family
    page, title = FAMILIES[family]
    return f"[{family}]({prefix}{page})"


def methods_table(prefix: str = "") -> str:
    """The methods table (method, family, paper, what is faithful); ``prefix``: the path from the
    page to the documentation's root (``docs/`` from the README, ``../`` from a methods page)."""
    lines = ["| method | `--method` | family | paper | as published |", "|---|---|---|---|---|"]
    for r in method_rows():
        lines.append(f"| {r['label']} | `{r['name']}` | {_family_link(r['family'], prefix)} | {_text(r['citation'])} | "
                     f"{_text(r['faithful'])} |")
    return "\n".join(lines) + "\n"


def family_section(families: list[str]) -> str:
    """The API of every registered method of ``families`` (mkdocstrings blocks), or a line saying
    that none is registered yet."""
    rows = [r for r in method_rows() if r["family"] in families]
    if not rows:
        return "No method of this family is registered in this version of the lab.\n"
    return "\n".join(f"### {r['label']} (`--method {r['name']}`)\n\n::: {r['path']}\n" for r in rows)


def other_methods() -> str:
    rows = [r for r in method_rows() if r["family"] not in FAMILIES]
    if not rows:
        return ""
    return "## Other methods\n\n" + "\n".join(f"### {r['label']} (`--method {r['name']}`)\n\n::: {r['path']}\n"
                                              for r in rows)


# --------------------------------------------------------------------------- config keys

def _cell(value) -> str:
    from .config import NA, show
    if value == NA:
        return "–"
    return f"`{show(value)}`".replace("|", "\\|")


def config_table() -> str:
    """Every config key: default, unit, published value and meaning, from the fields' metadata."""
    from .config import key_table
    lines = ["| key | default | unit | published | meaning |", "|---|---|---|---|---|"]
    for r in key_table():
        lines.append(f"| `{r['key']}` | {_cell(r['default'])} | {r['unit']} | {_cell(r['paper'])} | "
                     f"{_text(r['help'])} |")
    return "\n".join(lines) + "\n"


def departure_table() -> str:
    """The keys in which a run can depart from the published code, with their published values:
    every key of ``config.PUBLISHED_VARIANTS`` (a preset starts from these)."""
    from dataclasses import fields

    from .config import PUBLISHED_VARIANTS, Config
    meta = {f.name: f.metadata for f in fields(Config)}
    lines = ["| key | published | meaning |", "|---|---|---|"]
    for key, value in PUBLISHED_VARIANTS.items():
        lines.append(f"| `{key}` | {_cell(value)} | {_text(meta[key]['help'])} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line

def cli_reference() -> str:
    """Every command of ``python -m rdfcil`` with its options, from the argument parser."""
    from .__main__ import parser
    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    parts = []
    for name, p in sub.choices.items():
        parts.append(f"## `{name}`\n\n{helps.get(name, '')}.\n\n```text\n{p.format_usage().strip()}\n```\n")
        rows = [a for a in p._actions if a.option_strings and a.dest != "help"]
        if rows:
            parts.append("| option | default | meaning |\n|---|---|---|")
            for a in rows:
                default = "" if a.default in (None, False, argparse.SUPPRESS) else f"`{a.default}`"
                choices = f" (one of {', '.join(map(str, a.choices))})" if a.choices else ""
                parts.append(f"| `{', '.join(a.option_strings)}` | {default} | {_text((a.help or '') + choices)} |")
            parts.append("")
        if name == "run":
            parts.append("Any config key is an option of `run` too (`--key value`, `--no-<key>` for a switch): "
                         "see [the configuration keys](config.md).\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- results

def contributing() -> str:
    """CONTRIBUTING.md without its title (the page has its own)."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    return text.split("\n", 1)[1] if text.startswith("# ") else text


def demo_table() -> str:
    """The committed demo table (``figures/digits/reproduction.md``, written by ``make results``)
    with its provenance line."""
    return DEMO_TABLE.read_text() if DEMO_TABLE.is_file() else "The demo table has not been generated.\n"


def _mean_std(mean, std) -> str:
    return "–" if mean is None else f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")


def _benches() -> dict:
    import json
    return {d: json.loads((f / "accuracy.json").read_text()) for d, f in BENCHES.items()
            if (f / "accuracy.json").is_file()}


def _ranked(methods: dict) -> list:
    from .tables import method_rank
    return sorted(methods.items(), key=lambda item: method_rank(item[0]))


def _repeats(row: dict) -> str:
    seeds, orders = len(set(row.get("seeds") or [0])), len(set(row.get("class_orders") or [0]))
    return f"{seeds} seed{'s' * (seeds > 1)}" + (f" x {orders} class orders" if orders > 1 else "")


def bench_times() -> str:
    """Every method's mean wall time per run (s) on each committed benchmark, and as a multiple
    of Finetune's there (the frozen-backbone methods train the base task only)."""
    from .methods import METHODS
    benches = _benches()
    if not benches:
        return "No accuracy benchmark has been committed.\n"
    lines = ["| method |" + "".join(f" {BENCH_TITLES[d]}: s per run | × Finetune |" for d in benches),
             "|---|" + "---:|---:|" * len(benches)]
    by_method = {d: {r["method"]: r for r in rows} for d, rows in benches.items()}
    for name, cls in _ranked(METHODS):
        found = [by_method[d].get(name) for d in benches]
        if not any(found):
            continue
        cells = []
        for d, r in zip(benches, found):
            base = by_method[d].get("finetune")
            ratio = f"{r['seconds_mean'] / base['seconds_mean']:.2f}" if r and base and base["seconds_mean"] else "–"
            cells.append(f" {r['seconds_mean']:.0f} | {ratio} |" if r else " – | – |")
        lines.append(f"| {cls.label or name} |" + "".join(cells))
    return "\n".join(lines) + "\n"


def bench_table() -> str:
    """Every method's final and average incremental accuracy (%, mean ± std over the runs) on
    each committed benchmark (:data:`BENCHES`, ``accuracy.json`` as ``bench-accuracy`` writes
    it), a column pair per dataset, with the classifier and each benchmark's provenance line."""
    from .methods import METHODS
    benches = _benches()
    if not benches:
        return "No accuracy benchmark has been committed.\n"
    head = "| method | family | classifier |" + "".join(f" final, {BENCH_TITLES[d]} | avg. incr., {BENCH_TITLES[d]} |"
                                                    for d in benches)
    lines = [head, "|---|---|---|" + "---:|---:|" * len(benches)]
    by_method = {d: {r["method"]: r for r in rows} for d, rows in benches.items()}
    for name, cls in _ranked(METHODS):
        found = [by_method[d].get(name) for d in benches]
        if not any(found):
            continue
        classifier = next(r["classifier"] for r in found if r)
        cells = "".join(f" {_mean_std(r['final_mean'], r['final_std'])} | {_mean_std(r['avg_mean'], r['avg_std'])} |"
                        if r else " – | – |" for r in found)
        lines.append(f"| {cls.label or name} | {cls.family or 'other'} | {_text(classifier)} |{cells}")
    notes = [f"{BENCH_TITLES[d]} ({rows[0]['split']}, {_repeats(rows[0])}): {rows[0]['provenance']}"
             for d, rows in benches.items()]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


# --------------------------------------------------------------------------- filling pages

def part(name: str, prefix: str = "") -> str:
    """The generated text for a marker name."""
    if name.startswith("family "):
        return family_section(name.split()[1:])
    parts = {"methods": lambda: methods_table(prefix), "other-methods": other_methods, "config": config_table,
             "departures": departure_table, "cli": cli_reference, "results": demo_table,
             "bench": bench_table, "bench times": bench_times,
             "contributing": contributing}
    if name not in parts:
        raise KeyError(f"unknown generated part '{name}'")
    return parts[name]()


def fill(text: str, prefix: str = "") -> str:
    """``text`` with every marker line replaced by its part."""
    return MARKER.sub(lambda m: part(m.group(1), prefix).rstrip("\n"), text)


def update_readme(path: Path = ROOT / "README.md") -> bool:
    """Rewrite the README's generated sections, each between ``<!-- rdfcil: NAME -->`` and
    ``<!-- /rdfcil -->``; returns whether the file changed."""
    from .io import atomic_write_text
    text = path.read_text()
    block = re.compile(r"(<!-- rdfcil: ([a-z -]+) -->\n).*?(<!-- /rdfcil -->)", re.S)
    new = block.sub(lambda m: m.group(1) + part(m.group(2), "docs/").rstrip("\n") + "\n" + m.group(3), text)
    if new != text:
        atomic_write_text(path, new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:] != ["readme"]:
        sys.exit("usage: python -m rdfcil.docgen readme")
    print("README.md " + ("updated" if update_readme() else "unchanged"))
