"""The committed demo table (``figures/digits/reproduction.md``) is what the code gives: the
demo's runs (``reproduce.ipynb``'s default plan on digits, one CPU thread) are made, or reused
from the same run folders that the notebook's own run under nbval uses, and their table must
equal the committed one to the last digit. ``make results`` regenerates it."""

import json
import os
from pathlib import Path

from rdfcil import paper, sweep, tables
from rdfcil.docgen import DEMO_TABLE
from rdfcil.runtable import collect

ROOT = Path(__file__).resolve().parents[1]


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def demo_configs(out_dir):
    configs = paper.plan("digits", out_dir=str(out_dir), data_root="data", device="cpu")
    assert {c.threads for c in configs} == {1}  # the committed table's thread count
    return configs


def test_the_committed_demo_table_is_what_the_code_gives(tmp_path):
    configs = demo_configs(ROOT / "runs" / "notebooks")  # the notebook's folders: trained once for both

    def made_elsewhere(c):  # a folder the notebook trained on a GPU is not the CPU table's run
        record = Path(c.out) / "results.json"
        return record.is_file() and json.loads(record.read_text()).get("device") != "cpu"
    if any(made_elsewhere(c) for c in configs):
        configs = demo_configs(tmp_path)
    sweep.run_grid(configs, jobs=2 if (os.cpu_count() or 1) > 1 else 1, progress=False)
    rows = tables.summary_rows(collect([c.out for c in configs]), paper.published)
    committed = DEMO_TABLE.read_text()
    assert table_lines(committed) == table_lines(tables.markdown_table(rows)), \
        "figures/digits/reproduction.md is stale: make results"
    assert "Made at commit " in committed and "1 thread(s)" in committed
