"""Shared test settings. ``RDFCIL_TEST_DEVICE`` (default ``cpu``) is the device of every
end-to-end test: ``RDFCIL_TEST_DEVICE=cuda make test`` runs the suite on a GPU.

``python -m rdfcil check`` (a few minutes, one core) runs in the background from the end of
collection, at a lower priority, beside the other tests, which mostly keep one core busy; its
test goes last and reads what it wrote (:func:`background_check`). ``make test`` runs pytest at
one CPU thread (``OMP_NUM_THREADS=1``), so that the two never oversubscribe the cores: a
two-thread operator waits for its slower thread."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TEST_DEVICE = os.environ.get("RDFCIL_TEST_DEVICE", "cpu")
CHECK_TEST = "test_check_passes_every_step_and_prints_one_table"
CHECK = pytest.StashKey[tuple]()


def pytest_collection_modifyitems(config, items):
    """The test of the background check goes last, so that the check runs beside the others."""
    items[:] = [i for i in items if i.name != CHECK_TEST] + [i for i in items if i.name == CHECK_TEST]


def pytest_collection_finish(session):
    """Start ``python -m rdfcil check --device TEST_DEVICE`` (niced, one CPU thread) if its test
    was collected; its output goes to files in its folder, which the test reads."""
    if not any(item.name == CHECK_TEST for item in session.items):
        return
    out = Path(tempfile.mkdtemp(prefix="rdfcil-check-test-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "rdfcil", "check", "--device", TEST_DEVICE,
                                    "--out", str(out / "check")], stdout=stdout, stderr=stderr, env=env,
                                   preexec_fn=lambda: os.nice(5))
    session.config.stash[CHECK] = (process, out)


def pytest_sessionfinish(session):
    process, out = session.config.stash.get(CHECK, (None, None))
    if process is not None:
        if process.poll() is None:
            process.kill()
        process.wait()
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def background_check(request) -> tuple:
    """``(exit status, stdout, stderr, folder)`` of the check started at the end of collection,
    once it has finished (at most 25 minutes)."""
    process, out = request.config.stash[CHECK]
    returncode = process.wait(timeout=1500)
    return returncode, (out / "stdout.txt").read_text(), (out / "stderr.txt").read_text(), out / "check"


@pytest.fixture
def test_device() -> str:
    return TEST_DEVICE


def demo_configs(out_dir) -> list:
    """The demo's configs (``reproduce.ipynb``'s default plan on digits: 5 tasks, seed 0, one CPU
    thread) with their run folders under ``out_dir``."""
    from rdfcil import paper
    configs = paper.plan("digits", out_dir=str(out_dir), data_root="data", device="cpu")
    assert {c.threads for c in configs} == {1}  # the committed table's thread count
    return configs


def notebook_parameters(name: str) -> dict:
    """The default values of a notebook's parameters cell (the one tagged ``parameters``)."""
    import json
    from pathlib import Path
    cells = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / name).read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict = {}
    exec("".join(cell["source"]), {}, values)
    return values


def notebook_extra_configs() -> list:
    """The longest run the walkthrough notebooks train at their default parameters beyond the
    demo's: notebook 03's R-DFCIL without relational distillation, configured exactly as the
    notebook configures it (so that it reuses it)."""
    from rdfcil import paper
    p = notebook_parameters("03_relation_distillation.ipynb")
    config = paper.walkthrough(p["dataset"], p["num_tasks"], p["first_task_classes"], p["seed"], p["preset"],
                               p["overrides"], p["data_root"], p["device"], p["out_dir"], tag="rkd-none", rkd="none")
    assert config.threads == 1  # as the grid runs it
    return [config]


def shared_demo_configs(tmp_path) -> list:
    """The demo's configs in the notebooks' run folders (``runs/notebooks``), which the demo
    test, the end-to-end tests and the notebooks under nbval share, so each run is trained once
    for all of them; in ``tmp_path`` when a folder there was made on another device."""
    import json
    from pathlib import Path
    configs = demo_configs(Path(__file__).resolve().parents[1] / "runs" / "notebooks")

    def made_elsewhere(c):
        record = Path(c.out) / "results.json"
        return record.is_file() and json.loads(record.read_text()).get("device") != "cpu"
    return demo_configs(tmp_path) if any(made_elsewhere(c) for c in configs) else configs


def two_processes_and_one(tmp_path, script: str, port: int, **fields) -> tuple:
    """Run ``script`` (a format string with an ``{out}`` field, and ``fields``) as two gloo
    processes, with the environment torchrun sets but without its launcher, then once in this
    process (no ``WORLD_SIZE``: reduce is the identity); returns what each saved to its ``out``,
    ``(one, two)``."""
    import os
    import runpy
    import subprocess
    import sys
    import torch
    for name in ("one", "two"):
        (tmp_path / f"{name}.py").write_text(script.format(out=str(tmp_path / f"{name}.pt"), **fields))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [subprocess.Popen([sys.executable, str(tmp_path / "two.py")], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for process in ranks:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    runpy.run_path(str(tmp_path / "one.py"))
    return torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
