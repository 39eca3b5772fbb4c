"""rdfcil.collect (every run folder as one DataFrame), the tables built on it, and
viz.compare_runs (several runs side by side, PNG + PDF)."""

import json

import pytest

import rdfcil
from rdfcil import tables, viz
from rdfcil.config import resolve

pd = pytest.importorskip("pandas")

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"
TINY = {"dataset": "digits", "preset": "quick", "num_tasks": 2, "epochs": 2, "refinement_epochs": 1,
        "milestones": [1], "backbone": "resnet8", "progress": False, "logger": "none"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """finetune x seeds 0, 1 and lwf x seed 0 (finished), an unfinished run, an unreadable one."""
    root = tmp_path_factory.mktemp("runs")
    results = [rdfcil.run(resolve({**TINY, "method": m, "seed": s, "out": str(root / "bench" / f"{m}-seed{s}")}))
               for m, s in (("finetune", 0), ("finetune", 1), ("lwf", 0))]
    unfinished = root / "other" / "lwf-3tasks"
    rdfcil.run(resolve({**TINY, "method": "lwf", "num_tasks": 5, "seed": 0, "out": str(unfinished)}))
    record = json.loads((unfinished / "results.json").read_text())
    record.update(finished=False, accuracy_per_task=record["accuracy_per_task"][:3],
                  accuracy_matrix=record["accuracy_matrix"][:3], wall_seconds=record["wall_seconds"][:3])
    (unfinished / "results.json").write_text(json.dumps(record))
    broken = root / "other" / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("epochs: 2\n")
    (broken / "results.json").write_text("{ not json")
    return root, results


def test_collect_one_row_per_run_folder_and_a_warning_for_the_unreadable(sweep):
    root, results = sweep
    with pytest.warns(UserWarning, match=r"1 unreadable run folder\(s\) left out: .*broken \(RdfcilError"):
        table = rdfcil.collect(root)
    assert len(table) == 4
    assert list(table.columns[-1:]) == ["path"]
    for key in ("dataset", "method", "num_tasks", "seed", "epochs", "lr", "final_accuracy",
                "average_incremental_accuracy", "old_accuracy", "new_accuracy", "forgetting", "seconds_base",
                "seconds_train", "seconds_eval", "seconds_total", "finished", "tasks_finished"):
        assert key in table.columns, key
    row = table.set_index("path").loc[results[2].config["out"]]
    assert row.method == "lwf" and row.final_accuracy == pytest.approx(results[2].final_accuracy)
    assert row.old_accuracy == pytest.approx(results[2].old_accuracy[-1])
    assert row.forgetting == pytest.approx(results[2].forgetting[0])
    assert row.seconds_total == pytest.approx(results[2].wall_seconds_total)
    assert row.seconds_base == pytest.approx(results[2].wall_seconds[0]["base"])
    assert bool(row.finished) and row.tasks_finished == 2
    unfinished = table[~table.finished]
    assert len(unfinished) == 1 and unfinished.iloc[0].tasks_finished == 3 and unfinished.iloc[0].num_tasks == 5


def test_a_sweep_is_a_group_by(sweep):
    root, results = sweep
    table = rdfcil.collect(root / "bench")
    stats = table.groupby("method").final_accuracy.agg(["mean", "std", "count"])
    finetune = [r.final_accuracy for r in results[:2]]
    assert stats.loc["finetune", "mean"] == pytest.approx(sum(finetune) / 2)
    assert stats.loc["finetune", "count"] == 2 and stats.loc["lwf", "count"] == 1


def test_collect_a_list_of_folders_keeps_their_order_and_bench_rows_match(sweep):
    root, results = sweep
    folders = [r.config["out"] for r in reversed(results)]
    table = rdfcil.collect(folders)
    assert list(table.path) == folders
    rows = tables.summary_rows(table)  # methods by rank, seeds in the order of the folders
    assert [r["method"] for r in rows] == ["finetune", "lwf"] and rows[0]["seeds"] == [1, 0]
    assert rows == tables.summary_rows(list(reversed(results)))  # the same from Results in memory
    assert rows[1]["final_std"] is None  # one seed


def test_collect_of_a_missing_folder_is_one_line():
    with pytest.raises(rdfcil.RdfcilError, match="does not exist"):
        rdfcil.collect("/nonexistent/runs")


def test_reproduction_rows_from_the_table(sweep):
    root, results = sweep
    rows = tables.summary_rows(rdfcil.collect(root / "bench"))
    assert [(r["method"], r["split"], r["seeds"]) for r in rows] == [("finetune", "2 × 5", [0, 1]),
                                                                     ("lwf", "2 × 5", [0])]
    assert rows == tables.summary_rows(results)


def test_compare_runs_draws_several_runs_and_exports_png_and_pdf(sweep, tmp_path):
    root, results = sweep
    folders = [results[0].config["out"], results[2].config["out"], str(root / "other" / "lwf-3tasks")]
    fig = viz.compare_runs(folders, save=tmp_path / "figures" / "compare")
    assert len(fig.axes) == 1 + 3 + 1  # curves, three matrices, the colour bar
    titles = [ax.get_title() for ax in fig.axes[1:4]]
    assert titles[0].startswith("Finetune") and titles[1].startswith("LwF") and "num_tasks 5" in titles[2]
    for suffix, magic in ((".png", PNG), (".pdf", PDF)):
        data = (tmp_path / "figures" / ("compare" + suffix)).read_bytes()
        assert len(data) > 1000 and data.startswith(magic)
    lines = fig.axes[0].get_lines()
    assert [len(line.get_xdata()) for line in lines] == [2, 2, 3]
    assert viz.run_labels([{"method": "rdfcil", "seed": 0}, {"method": "rdfcil", "seed": 1}]) == \
        ["R-DFCIL, seed 0", "R-DFCIL, seed 1"]
    fig2 = viz.compare_runs(results[:2], labels=["a", "b"])  # Results in memory, labels given
    assert [ax.get_title() for ax in fig2.axes[1:3]] == ["a", "b"]
