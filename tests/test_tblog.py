"""TensorBoard logging: the tags and their counts read back with tensorboard's own reader, the
same numbers with the logger on and off, a killed run keeps what it logged, the no-op logger,
and the one progress bar per run."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rdfcil import run
from rdfcil.config import resolve
from rdfcil.data import load_benchmark
from rdfcil.io import load_checkpoint

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = {"dataset": "digits", "preset": "quick", "method": "rdfcil", "num_tasks": 2, "seed": 1, "epochs": 2,
        "refinement_epochs": 1, "milestones": [1], "inversion_steps": 6, "inversion_batch_size": 32, "z_dim": 32,
        "generator_width": 16, "synthetic_pool": 256, "coverage_samples": 200, "backbone": "resnet8",
        "progress": False, "log_interval": 5}


def events(folder):
    accumulator = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    base = tmp_path_factory.mktemp("tb")
    on = run(resolve({**TINY, "logger": "tensorboard", "out": str(base / "on")}))
    off = run(resolve({**TINY, "logger": "none", "out": str(base / "off")}))
    return base, on, off


def test_tags_and_counts_read_back_with_tensorboards_reader(logged):
    base, on, _ = logged
    acc = events(base / "on")
    scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    bench = load_benchmark(resolve(TINY), "cpu")
    steps = {"base": 1 * bench.train.num_batches(range(0, 5), 64, drop_last=True),
             "rrl": 1 * bench.train.num_batches(range(5, 10), 64, drop_last=True),
             "refine": 1 * bench.train.num_batches(range(5, 10), 64, drop_last=True)}
    expected = {f"train/base/{t}" for t in ("ce", "total", "lr")}
    expected |= {f"train/rrl/{t}" for t in ("local_ce", "hkd", "rkd", "total", "lr")}
    expected |= {f"train/refine/{t}" for t in ("balanced_ce", "hkd", "total", "lr")}
    expected |= {f"inversion/{t}" for t in ("content", "balance", "smoothness", "bn_stats", "total")}
    expected |= {"synthetic/classes_covered", "synthetic/least_class_share", "accuracy/A_t",
                 "accuracy/average_incremental", "accuracy/old", "accuracy/new", "accuracy/task_0", "accuracy/task_1",
                 "forgetting/mean", "wall_seconds/base", "wall_seconds/inversion", "wall_seconds/eval",
                 "wall_seconds/rrl", "wall_seconds/refine"}
    assert set(scalars) == expected
    for phase, n in steps.items():  # every log_interval-th step of each phase
        assert len(scalars[f"train/{phase}/total"]) == math.ceil(n / 5), phase
    assert [e.step for e in scalars["train/base/ce"]] == list(range(0, steps["base"], 5))
    assert scalars["train/rrl/hkd"][0].step == steps["base"]  # one x axis over the run's training steps
    assert [e.step for e in scalars["inversion/bn_stats"]] == [0, 5]  # 6 steps, interval 5
    assert [e.step for e in scalars["accuracy/A_t"]] == [0, 1]
    assert [e.value for e in scalars["accuracy/A_t"]] == pytest.approx(on.accuracy_per_task, abs=1e-4)
    assert [e.step for e in scalars["accuracy/task_1"]] == [1] and len(scalars["accuracy/old"]) == 1
    assert scalars["train/base/lr"][0].value == pytest.approx(0.1)
    assert scalars["synthetic/classes_covered"][0].value == on.classes_covered[0]
    assert acc.Tags()["images"] == ["synthetic/images"] and len(acc.Images("synthetic/images")) == 1
    assert acc.Tags()["histograms"] == ["synthetic/labels"]
    image = acc.Images("synthetic/images")[0]
    assert image.width > 100 and image.height > 100  # 8x8 digits scaled up, a row per class


def test_logger_on_and_off_give_the_same_run(logged):
    base, on, off = logged
    assert not (base / "off" / "tb").exists()
    for key in ("accuracy_matrix", "accuracy_per_task", "class_coverage", "forgetting", "train_steps"):
        assert on.data[key] == off.data[key], key
    h_on, h_off = (json.loads((base / name / "history.json").read_text()) for name in ("on", "off"))
    assert h_on == h_off
    a = load_checkpoint(base / "on" / "task_1.pt")["model"]
    b = load_checkpoint(base / "off" / "task_1.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_op_logger_without_tensorboard(monkeypatch, tmp_path):
    from rdfcil import tblog
    monkeypatch.setattr(tblog, "tensorboard_available", lambda: False)
    with pytest.warns(UserWarning, match="tensorboard package is not installed"):
        logger = tblog.make_logger("tensorboard", tmp_path)
    assert not logger.enabled and not (tmp_path / "tb").exists()
    logger.scalars({"a": 1.0}, 0), logger.flush(), logger.close()
    assert not tblog.make_logger("none", tmp_path).enabled
    assert not tblog.make_logger("tensorboard", tmp_path, enabled=False).enabled  # ranks other than 0


def test_logger_key_is_validated_and_operational():
    from rdfcil.runs import OPERATIONAL_KEYS
    from rdfcil.errors import RdfcilError
    assert {"logger", "log_interval"} <= OPERATIONAL_KEYS
    assert resolve({"logger": "none"}).logger == "none" and resolve({}).logger == "tensorboard"
    with pytest.raises(RdfcilError, match="logger must be tensorboard or none"):
        resolve({"logger": "wandb"})


def test_a_killed_run_keeps_what_it_logged(tmp_path):
    args = ["--dataset", "digits", "--preset", "quick", "--method", "finetune", "--tasks", "5", "--epochs", "6",
            "--refinement-epochs", "1", "--milestones", "[3]", "--backbone", "resnet8", "--no-progress",
            "--out", str(tmp_path / "r")]
    process = subprocess.Popen([sys.executable, "-m", "rdfcil", "run", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    started = time.time()
    while not (tmp_path / "r" / "task_1.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() - started < 240
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    acc = events(tmp_path / "r")
    assert len(acc.Scalars("accuracy/A_t")) >= 2  # flushed after each task, before its checkpoint
    assert len(acc.Scalars("train/base/ce")) >= 1


def test_one_progress_bar_per_run_reset_per_phase(monkeypatch, tmp_path):
    """The engine makes a single tqdm bar and resets it for each phase: in JupyterLab one
    widget, not one per phase (and one printed line in papermill's saved output, test_progress)."""
    import tqdm
    made = []

    class Bar(tqdm.tqdm):  # the terminal's bar: pytest runs outside a kernel
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    run(resolve({**TINY, "progress": True, "logger": "none", "out": str(tmp_path / "r")}))
    assert len(made) == 1 and made[0]["leave"] is False
