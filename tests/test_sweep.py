"""Sweeps as separate processes: the same numbers as one run at a time, failures reported
without stopping the others, finished runs reused, the submitit path (local executor)."""

import json
import os

import pytest
import torch

from rdfcil import bench, sweep
from rdfcil.config import resolve
from rdfcil.errors import RdfcilError
from rdfcil.engine import run
from conftest import TEST_DEVICE

TINY = {"tasks": 2, "backbone": "resnet8", "epochs": 3, "refinement_epochs": 1, "milestones": [2],
        "inversion_steps": 10, "z_dim": 16, "generator_width": 8, "synthetic_pool": 64, "batch_size": 64,
        "progress": False, "device": TEST_DEVICE}


def tiny(method, seed, out, **more):
    return resolve({**TINY, "dataset": "digits", "method": method, "seed": seed, "out": str(out), **more})


def test_two_jobs_equal_one_run_at_a_time(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the environment would allow every core
    monkeypatch.setattr(sweep, "cpu_count", lambda: 4)  # so cores // jobs would give 2 threads a run
    torch.set_num_threads(3)  # and runs in this process would use 3
    methods, seeds = ["finetune", "rdfcil"], [0, 1]
    parallel = bench.sweep("digits", methods, seeds, tmp_path / "par", TINY, jobs=2)
    sequential = bench.sweep("digits", methods, seeds, tmp_path / "seq", TINY, jobs=0)
    assert [(r.method, r.seed) for r in parallel] == [(m, s) for m in methods for s in seeds]
    for p, s in zip(parallel, sequential):
        assert p.finished and p.accuracy_matrix == s.accuracy_matrix, (p.method, p.seed)
        assert p.class_coverage == s.class_coverage
        assert p.threads == s.threads == [1, 1] and p.config["threads"] == 1  # a grid's runs: one thread each
    assert torch.get_num_threads() == 3  # restored after the runs made here
    torch.set_num_threads(1)
    assert [r.config["out"] for r in parallel] == [str(tmp_path / "par" / f"{m}-2tasks-seed{s}")
                                                   for m in methods for s in seeds]  # runs.run_name
    again = sweep.execute([tiny(r.method, r.seed, r.config["out"]) for r in parallel], jobs=2)
    assert all(o.reused for o in again)  # finished folders: no process started


def test_a_failed_run_is_one_line_and_the_others_finish(tmp_path, capsys):
    good = tiny("finetune", 0, tmp_path / "good")
    bad = tiny("finetune", 0, tmp_path / "bad", lr_incremental=1e12)
    outcomes = sweep.execute([bad, good], jobs=2)
    assert outcomes[1].results.finished and outcomes[1].error is None
    assert outcomes[0].results is None
    assert outcomes[0].error.startswith("non-finite loss in task 1, phase 'train'") and "\n" not in outcomes[0].error
    assert "failed: " in capsys.readouterr().err  # said while the grid ran
    with pytest.raises(RdfcilError, match=r"^1 of 2 runs failed: .*bad: non-finite loss") as err:
        sweep.run_all([bad, good], jobs=1, progress=False)
    assert "\n" not in str(err.value)


def test_grid_checks(tmp_path):
    a = tiny("finetune", 0, tmp_path / "same")
    with pytest.raises(RdfcilError, match="share the run folder"):
        sweep.run_all([a, tiny("lwf", 0, tmp_path / "same")])
    with pytest.raises(RdfcilError, match="jobs must be a positive integer"):
        sweep.run_all([a], jobs=-1)
    with pytest.raises(RdfcilError, match="unknown executor"):
        sweep.run_all([a], executor="kubernetes")
    assert sweep.error_line("Traceback\nerror: run folder 'x' is in use by process 12\n", 2) == \
        "run folder 'x' is in use by process 12"
    assert sweep.error_line("Killed\n", -9) == "exit status -9: Killed"


def test_task_of_a_running_run_reads_results_json(tmp_path):
    c = tiny("finetune", 0, tmp_path / "r", tasks=5)
    assert sweep.task_of(c) == "task 1/5"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps({"accuracy_per_task": [90.0, 80.0]}))
    assert sweep.task_of(c) == "task 3/5"


def test_submitit_local_executor_runs_the_grid_from_run_folders(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    c = tiny("lwf", 2, tmp_path / "grid" / "lwf")
    bad = tiny("finetune", 0, tmp_path / "grid" / "bad", lr_incremental=1e12)
    outcomes = sweep.execute([c, bad], executor="local", time=10, gpus=0, progress=False)
    assert outcomes[0].results.finished
    assert outcomes[1].error.startswith("non-finite loss in task 1"), outcomes[1].error
    assert (tmp_path / "grid" / ".submitit").is_dir()  # the jobs' logs, beside the run folders
    alone = run(tiny("lwf", 2, tmp_path / "alone"))
    assert outcomes[0].results.accuracy_matrix == alone.accuracy_matrix


def test_workers_see_one_gpu_each_from_the_callers_list(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    c = resolve({"dataset": "digits", "device": "auto"})
    assert sweep.visible_gpus([c]) == ["3", "5"] and sweep.default_jobs(["3", "5"]) == 4
    assert sweep.visible_gpus([resolve({"dataset": "digits", "device": "cpu"})]) == []
    env = sweep.child_environment("5", None)
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env.get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert sweep.visible_gpus([c]) == ["0", "1"]
    assert sweep.child_environment(None, 1)["OMP_NUM_THREADS"] == "1"


def test_slurm_parameters_and_no_cluster(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RdfcilError, match="executor 'slurm': .*srun"):
        sweep.submitit_executor("slurm", tmp_path / "logs", "gpu", 1, 8, 60, 18, None)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    executor = sweep.submitit_executor("slurm", tmp_path / "logs", "gpu", 1, 8, 60, 18, {"slurm_account": "lab"})
    params = executor._executor.parameters
    assert params["partition"] == "gpu" and params["gpus_per_node"] == 1 and params["cpus_per_task"] == 8
    assert params["time"] == 60 and params["array_parallelism"] == 18 and params["account"] == "lab"


def test_expected_work_against_hand_counts_and_the_longest_runs_start_first(tmp_path, monkeypatch):
    c = tiny("rdfcil", 0, tmp_path / "r")  # digits: 126 images per class, 5 + 5 classes, 3 epochs (1 refinement)
    assert sweep.expected_work(c) == 2 * 630 * 3 + 3 * 630 * 9 + 1 * 10 * 64 * 4
    assert sweep.expected_work(tiny("lwf", 0, tmp_path / "l")) == 2 * 630 * 3 + 3 * 630 * 4
    assert sweep.expected_work(tiny("joint", 0, tmp_path / "j")) == 2 * 630 * 3 + 3 * 1260 * 3
    grid = [resolve({"dataset": "digits", "preset": "quick", "method": m, "out": str(tmp_path / m)})
            for m in ("finetune", "lwf", "deepinversion", "abd", "rdfcil", "joint")]
    started = []

    class Finished:  # a child that ends at once with an error: only the start order matters here
        returncode = 1

        def __init__(self, command, **kwargs):
            started.append(read_yaml(command[-1])["method"])
            kwargs["stderr"].write("error: not run\n")

        def poll(self):
            return 1
    from rdfcil.config import read_yaml
    monkeypatch.setattr(sweep.subprocess, "Popen", Finished)
    outcomes = sweep.execute(grid, jobs=1, progress=False)
    assert started == ["deepinversion", "abd", "rdfcil", "joint", "lwf", "finetune"]  # most expected work first
    assert [o.config.method for o in outcomes] == [c.method for c in grid]  # results in grid order
    assert all(o.error == "not run" for o in outcomes)
