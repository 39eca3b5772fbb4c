"""Shared test settings. ``RDFCIL_TEST_DEVICE`` (default ``cpu``) is the device of every
end-to-end test: ``RDFCIL_TEST_DEVICE=cuda make test`` runs the suite on a GPU."""

import os

import pytest

TEST_DEVICE = os.environ.get("RDFCIL_TEST_DEVICE", "cpu")


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
