"""The loss terms of each training step, kept on the device and read back in blocks.

Reading a loss as a Python float (``float(loss)``, ``.item()``) makes the host wait for the GPU
to finish every kernel queued so far, so a loop that reads its losses each step can never run
ahead of the GPU: each step's launches wait for the last step's end. ``StepRecord`` keeps each
step's terms as 0-d tensors and reads a block of them back with one copy (one host sync) every
``interval`` steps and at the end of each epoch. The finite-loss check, the epoch means, the
logger and the progress bar's loss then use those floats: the same numbers as reading each
step, a block later. A NaN is still reported at the step where it first appeared.
"""

from __future__ import annotations

from typing import Callable

import torch


class StepRecord:
    """``add(step, terms)`` each step; ``flush()`` returns ``[(step, {term: float})]`` for the
    steps added since the last flush, after ``check(step, floats)`` on each in order (which may
    raise). ``add`` flushes by itself every ``interval`` steps and returns what it flushed."""

    def __init__(self, interval: int, check: Callable[[int, dict], None] | None = None):
        if interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        self.interval, self.check = interval, check
        self.pending: list[tuple[int, tuple[str, ...], torch.Tensor]] = []

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> list[tuple[int, dict[str, float]]]:
        """Copy the step's terms into a row of their own at once (on the device, no sync): the
        terms a CUDA-graph replay returns live in its static output buffers, which the next
        replay overwrites."""
        names = tuple(terms)
        row = torch.stack([value.detach().float() for value in terms.values()])
        self.pending.append((step, names, row))
        return self.flush() if len(self.pending) >= self.interval else []

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        """Every pending step's terms as floats: one device-to-host copy for the block."""
        if not self.pending:
            return []
        rows = torch.stack([row for _, _, row in self.pending]).cpu().tolist()
        flushed = [(step, dict(zip(names, row))) for (step, names, _), row in zip(self.pending, rows)]
        self.pending.clear()
        if self.check is not None:
            for step, values in flushed:
                self.check(step, values)
        return flushed
