"""MkDocs hooks: the generated parts of every page come from the sources (rdfcil.docgen), and
the notebooks and figures are copied in before the build.

Notebooks: the executed copies under ``build/notebooks/`` (``make docs`` writes them with
papermill) when they exist, else the committed notebooks (no outputs). Figures: ``figures/``.
"""

import re
import shutil
from pathlib import Path

from rdfcil import docgen

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXECUTED = ROOT / "build" / "notebooks"


def on_pre_build(config, **kwargs):
    target = DOCS / "notebooks"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
        executed = EXECUTED / source.name
        text = (executed if executed.is_file() else source).read_text()
        # Links from a notebook to the documentation's sources, as the site's pages.
        text = re.sub(r"\]\(\.\./docs/([^)#]*?)(?:index)?\.md", lambda m: f"](../../{m.group(1).rstrip('/')}/", text)
        (target / source.name).write_text(text)
    figures = DOCS / "figures"
    shutil.rmtree(figures, ignore_errors=True)
    shutil.copytree(ROOT / "figures", figures, ignore=shutil.ignore_patterns("*.pdf", "*.tex", "*.csv", "*.md"))


def on_page_markdown(markdown, page, **kwargs):
    depth = page.file.src_uri.count("/")
    return docgen.fill(markdown, "../" * depth)
