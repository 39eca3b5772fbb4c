"""Notebook output folders whatever the working directory; notebook metadata as JupyterLab writes
it; the progress bar's label at a phase change; the summary left when training ends."""

from __future__ import annotations

import glob
from pathlib import Path

import nbformat

from rdfcil import analysis, runs
from rdfcil.engine import time_summary
from rdfcil.progress import RunProgress

ROOT = Path(__file__).resolve().parent.parent


def test_relative_folders_come_from_the_project_root_whatever_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # papermill started in an empty folder
    assert analysis.project_path("runs/notebooks") == ROOT / "runs" / "notebooks"  # the package's clone
    assert analysis.project_path(tmp_path / "mine") == tmp_path / "mine"  # a parameter: as given
    save = analysis.figure_saver("figures", "digits")
    assert save("x") == ROOT / "figures" / "digits" / "x"
    assert capsys.readouterr().out == f"figures: {ROOT / 'figures' / 'digits'}\n"  # every folder written is named
    monkeypatch.setattr(runs, "package_checkout", lambda: tmp_path / "site-packages")  # installed from a wheel
    assert analysis.project_path("runs") == tmp_path / "runs"
    analysis.project_path("figures")
    out = capsys.readouterr().out
    assert out.count("note: no project root") == 1 and f"taken from '{tmp_path}'" in out  # said once


def test_notebooks_store_the_language_info_jupyterlab_writes():
    keys = {"codemirror_mode", "file_extension", "mimetype", "name", "nbconvert_exporter", "pygments_lexer", "version"}
    notebooks = sorted(glob.glob(str(ROOT / "notebooks" / "*.ipynb")))
    assert len(notebooks) >= 6
    for path in notebooks:
        info = nbformat.read(path, as_version=4).metadata["language_info"]
        assert set(info) >= keys and info["codemirror_mode"] == {"name": "ipython", "version": 3}, path
        assert info["mimetype"] == "text/x-python" and info["pygments_lexer"] == "ipython3", path


def test_a_phase_change_draws_the_new_label_with_the_new_count(capsys):
    progress = RunProgress(kind="text")
    bar = progress(20, "task 0 (of 5) base")
    bar.set_description("task 0 (of 5) base epoch 4/4")
    for _ in range(20):
        bar.update()
    bar.set_postfix(loss="0.081")
    capsys.readouterr()
    progress(30, "task 0 (of 5) inversion")
    drawn = [line for line in capsys.readouterr().err.split("\r") if line.strip()]
    assert drawn and all("/30" in line and "inversion" in line and "loss" not in line and "base" not in line
                         for line in drawn), drawn
    progress.close("trained task 0 in 3.0 s: base 2.0 s, inversion 1.0 s")
    assert capsys.readouterr().err.endswith("trained task 0 in 3.0 s: base 2.0 s, inversion 1.0 s\n")


def test_time_summary_sums_each_phase_over_the_tasks_trained():
    wall = [{"base": 2.0, "inversion": 1.0, "eval": 0.25}, {"rrl": 4.0, "refine": 0.5, "inversion": 1.5, "eval": 0.25}]
    assert time_summary(wall) == ("trained tasks 0-1 in 9.5 s: base 2.0 s, inversion 2.5 s, eval 0.5 s, rrl 4.0 s, "
                                  "refine 0.5 s")
    assert time_summary(wall, 1) == "trained task 1 in 6.2 s: rrl 4.0 s, refine 0.5 s, inversion 1.5 s, eval 0.2 s"


def test_paper_repeats_run_over_the_published_class_orders_at_the_published_seed():
    from rdfcil import paper, tables
    from rdfcil.data import published_orders
    from rdfcil.runs import Results
    configs = paper.plan("cifar100", methods=["rdfcil"], task_counts=[6], out_dir="/tmp/never-written")
    assert [(c.class_order, c.seed) for c in configs] == [(0, 1), (1, 1), (2, 1)]
    assert [Path(c.out).name for c in configs] == ["rdfcil-50+6tasks-seed1", "rdfcil-50+6tasks-seed1-order1",
                                                   "rdfcil-50+6tasks-seed1-order2"]
    import random
    for r, order in enumerate(published_orders("cifar100")):  # ABD's trainer: repeat r shuffles with seed r
        drawn = list(range(100))
        random.seed(r)
        random.shuffle(drawn)
        assert drawn == order
    by_seed = paper.plan("cifar100", methods=["rdfcil"], task_counts=[6], seeds=[0, 1, 2], class_orders=[0],
                         out_dir="/tmp/never-written")
    assert [(c.class_order, c.seed) for c in by_seed] == [(0, 0), (0, 1), (0, 2)]

    def result(seed, order, final):
        return Results({"dataset": "cifar100", "method": "rdfcil", "seed": seed, "num_tasks": 2,
                        "first_task_classes": 50, "tasks": [[0, 50], [50, 100]], "accuracy_per_task": [80.0, final],
                        "accuracy_matrix": [[80.0], [70.0, final]], "final_accuracy": final,
                        "average_incremental_accuracy": (80.0 + final) / 2, "wall_seconds_total": 1.0,
                        "config": {"dataset": "cifar100", "method": "rdfcil", "num_tasks": 2, "seed": seed,
                                   "class_order": order, "first_task_classes": 50}})
    orders = tables.summary_rows([result(1, k, 50.0 + k) for k in range(3)])
    assert orders[0]["over"] == "class orders" and orders[0]["class_orders"] == [0, 1, 2]
    assert "| R-DFCIL | 2 × 50 | 3 class orders | 51.00 ± 1.00 |" in tables.markdown_table(orders, published=False)
    assert "mean $\\pm$ std over class orders" in tables.latex_table(orders, published=False)
    seeds = tables.summary_rows([result(k, 0, 50.0 + k) for k in range(3)])
    assert seeds[0]["over"] == "seeds" and "| 3 seeds |" in tables.markdown_table(seeds, published=False)
