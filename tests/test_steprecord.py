"""Loss terms stay on the device and are read back in blocks (issue 14 point 4): the same
floats as reading every step, the non-finite step still named, and host reads by the package
that do not grow with the number of steps."""

import collections
import math
import sys
from pathlib import Path

import pytest
import torch

import rdfcil
from rdfcil.engine import FiniteCheck
from rdfcil.errors import RdfcilError
from rdfcil.steprecord import StepRecord

PACKAGE = str(Path(rdfcil.__file__).parent)


def test_blocks_of_steps_come_back_as_the_floats_of_each_step():
    record = StepRecord(interval=2)
    terms = [{"ce": torch.tensor(0.1 * i), "kd": torch.tensor(1.0 / (i + 1), dtype=torch.bfloat16)} for i in range(5)]
    flushed = [record.add(i, t) for i, t in enumerate(terms)]
    assert [len(f) for f in flushed] == [0, 2, 0, 2, 0]  # a read every 2 steps
    rest = record.flush()
    assert [step for step, _ in rest] == [4] and record.flush() == []
    every = [pair for block in flushed for pair in block] + rest
    assert [step for step, _ in every] == [0, 1, 2, 3, 4]
    for (step, values), t in zip(every, terms):
        assert values == {"ce": float(t["ce"]), "kd": float(t["kd"])}  # exactly the per-step float


def test_terms_are_copied_when_added_not_when_read():
    """A CUDA-graph replay returns its terms in static buffers that the next replay overwrites;
    the record keeps each step's values as they were when the step added them."""
    record = StepRecord(interval=10)
    buffer = torch.tensor(1.0)  # the same output storage every step, as a graph replay gives
    for step, value in enumerate((1.0, 5.0, -2.0)):
        buffer.fill_(value)
        record.add(step, {"ce": buffer, "total": buffer * 2})
    buffer.fill_(99.0)
    assert record.flush() == [(0, {"ce": 1.0, "total": 2.0}), (1, {"ce": 5.0, "total": 10.0}),
                              (2, {"ce": -2.0, "total": -4.0})]


def test_the_first_non_finite_step_is_named_from_its_block(tmp_path):
    from rdfcil.io import save_checkpoint
    save_checkpoint(tmp_path / "task_1.pt", {"model": {"w": torch.ones(2)}})  # read back before it is called intact
    record = StepRecord(interval=4, check=FiniteCheck(task=2, phase="rrl", last_checkpoint=str(tmp_path / "task_1.pt")))
    for step, value in enumerate([0.5, 0.4, float("nan"), float("inf")]):
        if step < 3:
            assert record.add(step, {"ce": torch.tensor(0.3), "hkd": torch.tensor(value)}) == []
    with pytest.raises(RdfcilError, match=r"non-finite loss in task 2, phase 'rrl', step 2: term hkd = nan; "
                                          r"the checkpoint of the last finished task \(.*task_1.pt\) is intact"):
        record.add(3, {"ce": torch.tensor(0.3), "hkd": torch.tensor(math.inf)})
    with pytest.raises(ValueError):
        StepRecord(interval=0)


READS = ("item", "tolist", "__float__", "__bool__", "__int__", "cpu", "numpy")


def package_reads(monkeypatch, config: dict) -> int:
    """Runs ``config`` and counts the tensor-to-host reads made by the package's own code."""
    calls = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
                calls["read"] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        rdfcil.run(config)
    finally:
        monkeypatch.undo()
    return calls["read"]


def test_host_reads_do_not_grow_with_the_steps(tmp_path, monkeypatch):
    """Twice the training steps (batch 32 instead of 64) and three times the inversion steps:
    the same number of reads with a block longer than the run; with a read every step
    (``sync_interval: 1``), at least one more read per extra step."""
    torch.set_num_threads(1)
    base = {"dataset": "digits", "method": "rdfcil", "tasks": 2, "backbone": "resnet8", "epochs": 2,
            "refinement_epochs": 1, "milestones": [1], "z_dim": 16, "generator_width": 8, "synthetic_pool": 0,
            "inversion_batch_size": 16, "progress": False, "logger": "none", "device": "cpu", "seed": 0}
    few = {**base, "batch_size": 64, "inversion_steps": 10}
    many = {**base, "batch_size": 32, "inversion_steps": 30}
    reads = {(name, interval): package_reads(monkeypatch, {**config, "sync_interval": interval,
                                                         "out": str(tmp_path / f"{name}-{interval}")})
             for name, config in (("few", few), ("many", many)) for interval in (10_000, 1)}
    assert reads[("few", 10_000)] == reads[("many", 10_000)]
    # digits task 0: 630 training images -> 9 steps of 64 or 19 of 32 per epoch; 20 more inversion steps
    extra_steps = 20 + 2 * (19 - 9)
    assert reads[("many", 1)] - reads[("few", 1)] >= extra_steps
