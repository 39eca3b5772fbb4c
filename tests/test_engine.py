"""End-to-end runs on the embedded digits data, the run folder, and the command line."""

import json
import subprocess
import sys

import pytest

from rdfcil import run
from rdfcil.config import resolve
from rdfcil.errors import RdfcilError
from conftest import TEST_DEVICE, shared_demo_configs

QUICK = {"dataset": "digits", "preset": "quick", "tasks": 5, "seed": 0, "progress": False, "device": TEST_DEVICE}
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's configs by method, in the run folders the demo test and the notebooks share: the
    notebooks' digits budget (30 epochs, 200 inversion steps; the quick preset's 200 epochs are a
    benchmark, bench-accuracy, not a test)."""
    return {c.method: c for c in shared_demo_configs(tmp_path_factory.mktemp("runs"))}


@pytest.fixture(scope="module")
def quick_runs(demo):
    """The demo's Finetune, Joint and R-DFCIL runs (trained here unless the demo test or a notebook
    already trained them: the numbers are the same either way)."""
    return {m: run(demo[m]) for m in ("finetune", "joint", "rdfcil")}


def test_joint_beats_finetune_and_finetune_forgets(quick_runs):
    ft, joint = quick_runs["finetune"], quick_runs["joint"]
    assert joint.final_accuracy > 90.0
    assert joint.final_accuracy > ft.final_accuracy + 50.0
    assert ft.old_accuracy[-1] < 10.0  # old classes vanish
    assert ft.new_accuracy[-1] > 90.0  # while the last task is learned


def test_rdfcil_beats_finetune_by_ten_points(quick_runs):
    rd, ft = quick_runs["rdfcil"], quick_runs["finetune"]
    assert rd.final_accuracy >= ft.final_accuracy + 10.0, (rd.final_accuracy, ft.final_accuracy)


def test_head_ceilings_score_the_model_head_and_two_fitted_heads(quick_runs):
    from rdfcil.analysis import head_ceilings, load_run
    rd = quick_runs["rdfcil"]
    scores = head_ceilings(load_run(rd.config["out"]), 4, steps=200, synthetic=1000)
    assert set(scores) == {"model", "real", "synthetic"}
    assert scores["model"]["all"] == pytest.approx(rd.final_accuracy, abs=1e-9)  # the run's own number
    assert scores["model"]["old"] == pytest.approx(rd.old_accuracy[-1], abs=1e-9)
    assert scores["real"]["all"] > 80.0  # the features separate all 10 digits given real data
    assert scores["synthetic"]["all"] > 30.0  # far above chance (10 %) without any real old image
    with pytest.raises(RdfcilError, match="finished incremental task"):
        head_ceilings(load_run(rd.config["out"]), 0)


def test_results_json_holds_every_field(quick_runs, tmp_path):
    rd = quick_runs["rdfcil"]
    folder = rd.config["out"]
    data = json.load(open(f"{folder}/results.json"))
    for key in ("dataset", "method", "num_tasks", "first_task_classes", "seed", "class_order",
                "accuracy_matrix", "accuracy_per_task", "final_accuracy", "average_incremental_accuracy",
                "old_accuracy", "new_accuracy", "forgetting", "wall_seconds", "config", "version", "git_commit"):
        assert key in data
    a = data["accuracy_matrix"]
    assert [len(row) for row in a] == [1, 2, 3, 4, 5]
    assert data["final_accuracy"] == data["accuracy_per_task"][-1]
    assert data["average_incremental_accuracy"] == pytest.approx(sum(data["accuracy_per_task"]) / 5)
    assert len(data["forgetting"]) == 4 and data["first_task_classes"] == 2
    assert set(data["wall_seconds"][0]) >= {"base", "inversion", "eval"}
    assert set(data["wall_seconds"][1]) >= {"rrl", "refine", "inversion", "eval"}
    assert "inversion" not in data["wall_seconds"][-1]  # nothing to invert after the last task
    assert sum(n > 0 for n in data["class_coverage"][3]) >= 6  # of 8 old classes
    import os
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pt")) == [f"task_{t}.pt" for t in range(5)]
    assert os.path.isfile(f"{folder}/config.yaml") and os.path.isfile(f"{folder}/history.json")


def test_finished_run_is_reused_not_retrained(quick_runs, demo):
    ft = quick_runs["finetune"]
    again = run(resolve({**ft.config}))
    assert again.data == ft.data


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    small = {**QUICK, "method": "lwf", "epochs": 4, "refinement_epochs": 1, "milestones": [3], "tasks": 2}
    a = run(resolve({**small, "out": str(tmp_path / "a")}))
    b = run(resolve({**small, "out": str(tmp_path / "b")}))
    c = run(resolve({**small, "seed": 1, "out": str(tmp_path / "c")}))
    assert a.accuracy_matrix == b.accuracy_matrix
    assert a.accuracy_matrix != c.accuracy_matrix


def test_cli_list_and_one_line_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rdfcil", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "rdfcil" in out.stdout and "fashion-mnist" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "rdfcil", "run", "--dataset", "digits", "--tasks", "3",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: 3 tasks do not divide 10 classes; choose a divisor of 10 or set first_task_classes"
    assert not (tmp_path / "x").exists()  # nothing written before validation passes


def test_cli_run_digits_finetune(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rdfcil", "run", "--dataset", "digits", "--method", "finetune",
                          "--tasks", "2", "--seed", "0", "--epochs", "3", "--refinement-epochs", "1",
                          "--milestones", "[2]", "--out", str(tmp_path / "r"), "--no-progress",
                          "--device", TEST_DEVICE],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "finetune on digits, 2 tasks, seed 0: final" in out.stdout
    assert json.load(open(tmp_path / "r" / "results.json"))["finished"] is True


def test_mismatched_config_is_refused(tmp_path):
    small = {**QUICK, "method": "finetune", "epochs": 2, "refinement_epochs": 1, "milestones": [1],
             "tasks": 2, "out": str(tmp_path / "m")}
    run(resolve(small))
    with pytest.raises(RdfcilError, match="different config .*keys: epochs, seed"):
        run(resolve({**small, "epochs": 3, "seed": 4}))
