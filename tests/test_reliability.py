"""Runs that survive being killed, checkpoints safe to load, one-line answers to bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rdfcil import run
from rdfcil.config import resolve
from rdfcil.errors import RdfcilError
from rdfcil.io import load_checkpoint
from conftest import TEST_DEVICE

SMALL_RDFCIL = ["--dataset", "digits", "--method", "rdfcil", "--tasks", "5", "--seed", "3",
                "--backbone", "resnet8", "--epochs", "16", "--refinement-epochs", "3", "--milestones", "[10]",
                "--batch-size", "64", "--lr-incremental", "0.05", "--inversion-steps", "60",
                "--z-dim", "32", "--generator-width", "16", "--synthetic-pool", "256", "--no-progress",
                "--device", TEST_DEVICE]
METRICS = ("accuracy_matrix", "accuracy_per_task", "final_accuracy", "average_incremental_accuracy",
           "old_accuracy", "new_accuracy", "forgetting", "class_coverage", "class_order", "finished")


def cli(args, **kwargs):
    # One thread each: two runs side by side on two cores must not oversubscribe them.
    kwargs.setdefault("env", {**os.environ, "OMP_NUM_THREADS": "1"})
    return subprocess.Popen([sys.executable, "-m", "rdfcil", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(path, process, timeout=240):
    started = time.time()
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() - started < timeout
        time.sleep(0.05)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    whole = cli(SMALL_RDFCIL + ["--out", str(tmp_path / "whole")])
    killed = cli(SMALL_RDFCIL + ["--out", str(tmp_path / "killed")])
    wait_for(tmp_path / "killed" / "task_2.pt", killed)
    while len(json.load(open(tmp_path / "killed" / "results.json"))["accuracy_per_task"]) < 3:
        time.sleep(0.05)  # task 2's results.json follows its checkpoint
    time.sleep(1.0)  # in the middle of task 3
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "task_4.pt").exists()
    partial = json.load(open(tmp_path / "killed" / "results.json"))
    assert partial["finished"] is False and len(partial["accuracy_per_task"]) in (3, 4)
    resumed = cli(SMALL_RDFCIL + ["--out", str(tmp_path / "killed"), "--resume"])
    assert resumed.wait() == 0, resumed.communicate()
    assert whole.wait() == 0, whole.communicate()
    a = json.load(open(tmp_path / "whole" / "results.json"))
    b = json.load(open(tmp_path / "killed" / "results.json"))
    for key in METRICS:
        assert a[key] == b[key], key
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # no torn temporary files left


def test_sigint_stops_cleanly_and_says_how_to_resume(tmp_path):
    args = SMALL_RDFCIL + ["--out", str(tmp_path / "r")]  # 5 tasks: SIGINT lands well before the end
    process = cli(args)
    wait_for(tmp_path / "r" / "task_0.pt", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    again = cli(args)
    assert again.wait() == 0
    assert json.load(open(tmp_path / "r" / "results.json"))["finished"] is True


def test_checkpoints_load_with_weights_only_and_tampering_is_refused(tmp_path):
    folder = tmp_path / "run"
    run(resolve({"dataset": "digits", "method": "finetune", "tasks": 2, "epochs": 2, "refinement_epochs": 1,
                 "milestones": [1], "backbone": "resnet8", "progress": False, "device": TEST_DEVICE,
                 "out": str(folder)}))
    state = torch.load(folder / "task_1.pt", weights_only=True)
    assert state["task"] == 1 and "model" in state

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(RdfcilError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()

    data = (folder / "task_1.pt").read_bytes()
    (folder / "task_1.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RdfcilError) as err:
        load_checkpoint(folder / "task_1.pt")
    assert "task_1.pt" in str(err.value) and "truncated or corrupt" in str(err.value)
    assert "\n" not in str(err.value)


def test_nan_loss_names_task_phase_step_term_and_keeps_last_checkpoint(tmp_path):
    folder = tmp_path / "nan"
    config = resolve({"dataset": "digits", "method": "finetune", "tasks": 2, "epochs": 3, "refinement_epochs": 1,
                      "milestones": [2], "backbone": "resnet8", "lr_incremental": 1e12, "progress": False, "device": TEST_DEVICE,
                      "out": str(folder)})
    with pytest.raises(RdfcilError, match=r"non-finite loss in task 1, phase 'train', step \d+: term ce") as err:
        run(config)
    assert "task_0.pt" in str(err.value)
    assert load_checkpoint(folder / "task_0.pt")["task"] == 0
    assert not (folder / "task_1.pt").exists()
    assert len(json.load(open(folder / "results.json"))["accuracy_per_task"]) == 1


@pytest.mark.parametrize("overrides, fragment", [
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; valid datasets: digits, fashion-mnist"),
    ({"method": "ewc"}, "unknown method 'ewc'; valid methods: finetune, joint, lwf"),
    ({"tasks": 4}, "4 tasks do not divide 10 classes"),
    ({"tasks": 3, "first_task_classes": 5}, "do not split into 2 equal tasks"),
    ({"class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]}, "class_order must be a permutation of 0..9"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"lr": 0}, "lr must be positive"),
    ({"devise": "cpu"}, "unknown config key 'devise'; did you mean 'device'"),
    ({"dataset": "cifar100", "tasks": 10}, "cifar100: missing"),
])
def test_bad_input_one_line_nothing_written(tmp_path, overrides, fragment, monkeypatch):
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    out = tmp_path / "never"
    with pytest.raises(RdfcilError) as err:
        run({"dataset": "digits", "data_root": str(tmp_path / "empty"), **overrides, "out": str(out)})
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda(tmp_path):
    with pytest.raises(RdfcilError, match="CUDA is not available"):
        run({"dataset": "digits", "device": "cuda", "out": str(tmp_path / "x")})
    assert not (tmp_path / "x").exists()


def test_missing_data_root_names_file_and_layout(tmp_path, monkeypatch):
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(RdfcilError) as err:
        run({"dataset": "cifar100", "tasks": 10, "data_root": str(tmp_path), "out": str(tmp_path / "o")})
    message = str(err.value)
    assert "cifar-100-python/train" in message and "expected layout" in message and "download" in message
