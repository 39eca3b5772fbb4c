"""The committed demo table (``figures/digits/reproduction.md``) is what the code gives: the
demo's runs (``reproduce.ipynb``'s default plan on digits, one CPU thread) are made, or reused
from the same run folders that the notebook's own run under nbval uses, and their table must
equal the committed one to the last digit. ``make results`` regenerates it."""

import os
from pathlib import Path

from rdfcil import paper, sweep, tables
from rdfcil.docgen import DEMO_TABLE
from rdfcil.runtable import collect
from conftest import notebook_extra_configs, shared_demo_configs

ROOT = Path(__file__).resolve().parents[1]


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_the_committed_demo_table_is_what_the_code_gives(tmp_path):
    configs = shared_demo_configs(tmp_path)  # the notebook's folders: trained once for both
    # The walkthroughs' other default runs join the grid (they keep the second core busy while
    # R-DFCIL trains), so that nbval then reuses every run the notebooks need.
    extra = notebook_extra_configs() if configs[0].out.startswith(str(ROOT)) else []
    sweep.run_grid(configs + extra, jobs=2 if (os.cpu_count() or 1) > 1 else 1, progress=False)
    rows = tables.summary_rows(collect([c.out for c in configs]), paper.published)
    committed = DEMO_TABLE.read_text()
    assert table_lines(committed) == table_lines(tables.markdown_table(rows)), \
        "figures/digits/reproduction.md is stale: make results"
    assert "Made at commit " in committed and "1 thread(s)" in committed
