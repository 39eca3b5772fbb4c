"""``python -m rdfcil check`` on the test device (the CPU in CI): every step passes, and the
stand-in data it writes loads through the real loaders in their official layouts."""

import json
import subprocess
import sys

import pytest
import torch

from rdfcil.config import resolve
from rdfcil.data import load_benchmark, write_standin
from rdfcil.errors import RdfcilError
from conftest import TEST_DEVICE


def test_standins_load_through_the_official_loaders(tmp_path):
    write_standin("cifar100", tmp_path, (3, 2))
    write_standin("tiny-imagenet200", tmp_path, (2, 1))
    assert (tmp_path / "cifar100" / "cifar-100-python" / "train").is_file()
    assert len((tmp_path / "tiny-imagenet200" / "wnids.txt").read_text().split()) == 200
    cifar = load_benchmark(resolve({"dataset": "cifar100", "data_root": str(tmp_path), "tasks": 10}), "cpu")
    tiny = load_benchmark(resolve({"dataset": "tiny-imagenet200", "data_root": str(tmp_path), "tasks": 10,
                                   "num_workers": 0}), "cpu")
    assert (len(cifar.train), len(cifar.test), len(tiny.train), len(tiny.test)) == (300, 200, 400, 200)
    assert cifar.train.images.dtype == torch.uint8 and cifar.train.images.shape[1:] == (3, 32, 32)
    x, y = next(tiny.test.batches(range(0, 20), 64))
    assert x.shape == (20, 3, 64, 64) and sorted(y.tolist()) == list(range(20))
    with pytest.raises(RdfcilError, match="no stand-in for 'digits'"):
        write_standin("digits", tmp_path)


def test_standin_classes_are_learnable_by_their_means(tmp_path):
    """Nearest class mean on the raw pixels of the training images scores the test images far
    above chance (1 %): the stand-in carries class information, not noise alone."""
    write_standin("cifar100", tmp_path, (5, 3))
    bench = load_benchmark(resolve({"dataset": "cifar100", "data_root": str(tmp_path), "tasks": 10}), "cpu")
    xtr, ytr = next(bench.train.batches(range(0, 100), 10_000))
    xte, yte = next(bench.test.batches(range(0, 100), 10_000))
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(100)]).flatten(1)
    predicted = torch.cdist(xte.flatten(1), means).argmin(1)
    assert (predicted == yte).float().mean() > 0.5


def test_check_passes_every_step_and_prints_one_table(background_check):
    """``python -m rdfcil check --device TEST_DEVICE``, started in the background when the tests
    were collected (conftest.py), finished."""
    returncode, stdout, stderr, folder = background_check
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads((folder / "check.json").read_text())
    names = [s["name"] for s in report["steps"]]
    assert len(names) == 14 and all(s["ok"] for s in report["steps"]), names
    for method in ("finetune", "joint", "lwf", "deepinversion", "abd", "rdfcil"):
        assert f"{method}, cifar100 paper preset" in names
    steps = {s["name"]: s for s in report["steps"]}
    resume = steps["SIGKILL after task 0, then resume"]["data"]
    assert resume["killed_after"] in (1, 2)
    if TEST_DEVICE == "cpu":  # bit-identical on the CPU with the same thread count
        assert resume["same_as_uninterrupted"] is True
        assert "same numbers: yes" in steps["rdfcil, graphs: true"]["info"]  # graphs run eagerly off CUDA
    assert steps["bench-speed bf16"]["data"]["precision"] == "bf16"
    pick = steps["precision per phase, graphs: true"]["data"]
    assert pick["graphs"] is True and set(pick["pick"].values()) <= {"fp32", "bf16"}
    assert list(pick["pick"]) == ["base", "train", "rrl", "refine", "inversion"]
    table = stdout[stdout.index("| step |"):]
    assert table.count("| pass |") == 14 and "14 of 14 steps passed" in stdout


def test_check_refuses_extra_options():
    done = subprocess.run([sys.executable, "-m", "rdfcil", "check", "--epochs", "3"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "error: check takes --device, --budget and --out, got --epochs 3"
