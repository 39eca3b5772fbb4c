"""DS-AL: dual-stream analytic learning (Zhuang et al., AAAI 2024)."""

from __future__ import annotations

from ..analytic import DualStreamClassifier
from .acil import ACIL
from .base import register


@register
class DSAL(ACIL):
    """DS-AL (Zhuang et al., AAAI 2024), as the authors' code runs it
    (ZHUANGHP/Analytic-continual-learning ``analytic/DSAL.py``, PyCIL ``models/dsal.py``).

    ACIL's schedule (CE base task, frozen backbone, one statistics pass per task) with a
    :class:`~rdfcil.analytic.DualStreamClassifier`: the main stream is ACIL's ridge regression on
    ``ReLU(X)``; the compensation stream (``dsal_gamma_comp``) is a ridge regression on
    ``tanh(X)`` of the main stream's residual with the previous classes' columns set to zero,
    the main stream re-solved before each chunk's residual as in the authors' ``DSAL.fit``.
    Prediction: ``argmax main + dsal_compensation * compensation``.
    """

    name, label, color, rank = "dsal", "DS-AL", "#332288", 66
    classifier = "analytic, dual stream (RLS)"
    keys = ACIL.keys | {"dsal_compensation", "dsal_gamma_comp"}

    def make_head(self) -> DualStreamClassifier:
        c = self.config
        return DualStreamClassifier(self.model.feature_dim, c.analytic_buffer, c.analytic_gamma, c.seed,
                                    c.dsal_gamma_comp, c.dsal_compensation, self.model.device)
