"""A run folder has one writer: a second process is refused with the holder's pid; a lock left
by a process killed with SIGKILL does not block the next run."""

import os
import signal
import subprocess
import sys
import time

import pytest

from rdfcil import run
from rdfcil.errors import RdfcilError
from rdfcil.lock import folder_lock, holder, lock_paths
from conftest import TEST_DEVICE

TINY = ["--dataset", "digits", "--method", "finetune", "--tasks", "2", "--seed", "0", "--backbone", "resnet8",
        "--epochs", "3", "--refinement-epochs", "1", "--milestones", "[2]", "--no-progress", "--device", TEST_DEVICE]


def cli(args):
    return subprocess.Popen([sys.executable, "-m", "rdfcil", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_folder_in_use_in_this_process_is_refused_with_pid(tmp_path):
    folder = tmp_path / "run"
    with folder_lock(folder):
        assert holder(folder) == str(os.getpid())
        with pytest.raises(RdfcilError) as err:
            run({"dataset": "digits", "method": "finetune", "tasks": 2, "epochs": 1, "refinement_epochs": 0,
                 "milestones": [1], "backbone": "resnet8", "progress": False, "device": TEST_DEVICE,
                 "out": str(folder)})
        assert f"in use by process {os.getpid()}" in str(err.value) and "\n" not in str(err.value)
        assert not folder.exists()  # refused before anything was written
    assert not lock_paths(folder)[1].exists()  # the pid file goes with the lock
    with folder_lock(folder):  # released: taken again
        pass


def test_second_process_refused_then_sigkilled_holder_does_not_block(tmp_path):
    out = tmp_path / "run"
    long = TINY[:]
    long[long.index("--epochs") + 1] = "400"  # runs until killed
    first = cli(long + ["--out", str(out)])
    pid_file = lock_paths(out)[1]
    started = time.time()
    while not pid_file.exists():
        assert first.poll() is None, first.communicate()
        assert time.time() - started < 240
        time.sleep(0.05)
    second = cli(long + ["--out", str(out)])
    _, err = second.communicate(timeout=240)
    assert second.returncode == 2
    assert err.strip() == (f"error: run folder '{out}' is in use by process {first.pid} "
                           f"(lock {lock_paths(out)[0]}); wait for it to finish or stop it")
    assert first.poll() is None  # the holder was not disturbed
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert pid_file.exists()  # a stale pid file, under a lock the OS has dropped
    third = cli(TINY + ["--out", str(out), "--force"])
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert not pid_file.exists()
