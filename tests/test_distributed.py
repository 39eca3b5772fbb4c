"""torchrun with 2 processes (gloo, CPU) on digits: finishes, and matches one process."""

import json
import os
import subprocess
import sys

import pytest

from rdfcil import run
from rdfcil.config import resolve

JOINT = ["--dataset", "digits", "--method", "joint", "--preset", "quick", "--backbone", "resnet8", "--tasks", "5",
         "--seed", "0",
         "--epochs", "12", "--refinement-epochs", "3", "--milestones", "[8]", "--device", "cpu",
         "--no-progress"]  # --device cpu: the gloo path, also on a GPU machine
RDFCIL = ["--dataset", "digits", "--method", "rdfcil", "--tasks", "2", "--seed", "0", "--backbone", "resnet8",
          "--epochs", "8", "--refinement-epochs", "2", "--milestones", "[6]", "--batch-size", "64",
          "--inversion-steps", "20", "--z-dim", "32", "--generator-width", "16", "--synthetic-pool", "128",
          "--no-progress", "--device", "cpu"]


def torchrun(args, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29517", "-m", "rdfcil", "run", *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("final") == 1  # only rank 0 reports
    return json.load(open(out / "results.json"))


def as_overrides(args):
    pairs = zip(args[0::2], args[1::2])
    return {k[2:].replace("-", "_"): v for k, v in pairs if k != "--no-progress"}


def test_two_processes_match_one(tmp_path):
    two = torchrun(JOINT, tmp_path / "two")
    assert two["finished"] and two["processes"] == 2
    one = run(resolve({**as_overrides(JOINT[:-1]), "progress": False, "out": str(tmp_path / "one")}))
    assert one.final_accuracy > 90
    assert abs(two["final_accuracy"] - one.final_accuracy) < 5.0, (two["final_accuracy"], one.final_accuracy)
    assert len(list((tmp_path / "two").glob("task_*.pt"))) == 5


def test_two_processes_rdfcil_with_replay_and_inversion(tmp_path):
    two = torchrun(RDFCIL, tmp_path / "rd")
    assert two["finished"] and two["processes"] == 2
    assert len(two["accuracy_matrix"]) == 2 and two["final_accuracy"] > 20.0
    assert sum(n > 0 for n in two["class_coverage"][0]) >= 3


@pytest.mark.parametrize("cuda, device_name, backend", [(True, "auto", "nccl"), (True, "cuda", "nccl"),
                                                       (True, "cuda:1", "nccl"), (True, "cpu", "gloo"),
                                                       (False, "auto", "gloo"), (False, "cpu", "gloo")])
def test_backend_is_nccl_on_cuda_and_gloo_on_the_cpu(monkeypatch, cuda, device_name, backend):
    import torch
    from rdfcil.distributed import backend_for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert backend_for(device_name) == backend


def test_each_process_takes_cuda_local_rank():
    import torch
    from rdfcil.distributed import Distributed
    assert Distributed(rank=3, world=4, local_rank=1).device(torch.device("cuda")) == torch.device("cuda", 1)
    assert Distributed(rank=3, world=4, local_rank=1).device(torch.device("cpu")) == torch.device("cpu")
    assert Distributed().device(torch.device("cuda", 2)) == torch.device("cuda", 2)  # one process: as asked
