"""ACIL: analytic class-incremental learning (Zhuang et al., NeurIPS 2022)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..analytic import AnalyticClassifier, chunks, load_buffers
from .base import Method, Task, register


@register
class ACIL(Method):
    """ACIL (Zhuang et al., NeurIPS 2022), as the authors' code runs it
    (ZHUANGHP/Analytic-continual-learning ``analytic/ACIL.py``, PyCIL ``models/acil.py``).

    The base task is trained with CE by the shared loop; the backbone is then frozen. At the end
    of every task, the base task included ("re-align"), one statistics pass feeds the task's
    training images, ``analytic_batch`` at a time, to an :class:`~rdfcil.analytic.AnalyticClassifier`:
    a fixed random expansion of ``analytic_buffer`` units with ReLU and a ridge-regression head
    (``analytic_gamma``) in float64, equal to the authors' recursive least squares. Later tasks
    run no SGD phase. Prediction: ``argmax ReLU(f W_B^T) W`` (:meth:`scores`).

    Every task's checkpoint holds the head's sums in float64, ``analytic_buffer^2 * 8`` bytes per
    stream (512 MiB for ACIL at the authors' 8192 units, twice that for DS-AL).
    """

    name, label, color, rank = "acil", "ACIL", "#44AA99", 65
    preset_source = "analytic"
    classifier = "analytic (RLS)"
    keys = frozenset({"analytic_buffer", "analytic_gamma", "analytic_batch"})

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.head: AnalyticClassifier | None = None

    def make_head(self) -> AnalyticClassifier:
        c = self.config
        return AnalyticClassifier(self.model.feature_dim, c.analytic_buffer, c.analytic_gamma, c.seed,
                                  self.model.device)

    def incremental_phases(self, task: Task) -> list:
        return []  # the backbone is frozen after the base task

    def needs_statistics(self, task: Task) -> bool:
        return True

    def statistics(self, task: Task, batches, reduce) -> None:
        """Fit the analytic head on the task's features, one chunk of ``analytic_batch`` images
        (rounded up to whole batches) at a time, then solve it."""
        if self.head is None:
            self.head = self.make_head()
        per_chunk = math.ceil(self.config.analytic_batch / self.config.batch_size)
        features = ((self.model.features(x), y) for x, y in batches())
        for f, y in chunks(features, per_chunk):
            self.head.fit(f, y, task.classes, reduce)
        self.head.finish()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The analytic head's scores (N, seen) in float64; the model's logits before it exists."""
        if self.head is None:
            return self.model(x)
        return self.head(self.model.features(x))

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"analytic": self.head} if self.head is not None else {}

    def load_state_dict(self, state: dict, task: Task) -> None:
        super().load_state_dict(state, task)
        if "analytic" in state:
            self.head = self.make_head()
            load_buffers(self.head, state["analytic"])
