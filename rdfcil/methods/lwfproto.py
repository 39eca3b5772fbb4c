"""The authors' LwF with class prototypes and NCM, the base of the drift family (LwF + LDC,
LwF + ADC), as their PyCIL forks run it (alviur/ldc ``LDC_supervised/models/lwf.py``,
dipamgoswami/ADC ``models/lwf.py``, ``exps/lwf.json``); and SDC (Yu et al., CVPR 2020), the
switch ``sdc`` of the same file.

It is not a registered method: :class:`~rdfcil.methods.ldc.LDC` and
:class:`~rdfcil.methods.adc.ADC` build on it and add their drift compensation
(:meth:`LwFPrototypes.compensate`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .. import losses as L
from .base import Method, Phase, Task
from .features import class_sums, exact
from .ncm import ncm_distances

SDC_EPSILON = 1e-5  # added to every Gaussian weight of SDC (the authors' ``displacement``)


def lwf_loss(logits: torch.Tensor, old_logits: torch.Tensor, y: torch.Tensor, n_old: int, lamda: float,
             temperature: float) -> dict:
    """The authors' incremental LwF loss (``_update_representation``) on a batch of logits
    ``(B, n_seen)``, old-model logits ``(B, n_old)`` and labels ``(B,)``:
    ``ce = CE(z[:, n_old:], y - n_old)`` (the new classes only) and
    ``kd = lamda * (-mean_i sum_c softmax(z_old/T)_c log softmax(z[:, :n_old]/T)_c)`` (no T^2).
    Returns ``{"ce", "kd"}`` (scalars)."""
    return {"ce": L.local_ce(logits, y, n_old), "kd": lamda * L.kd(logits[:, :n_old], old_logits, temperature)}


def sdc_displacement(old_features: torch.Tensor, new_features: torch.Tensor, prototypes: torch.Tensor,
                     sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SDC's sums for one batch: with ``w_ci = exp(-||f_old_i - mu_c||^2 / (2 sigma^2)) + 1e-5``,
    returns ``(sum_i w_ci (f_new_i - f_old_i) (C, d), sum_i w_ci (C,))`` in float64 (the drift of
    prototype ``c`` is their ratio; sums, so that the processes' shards add up)."""
    old, new, mu = old_features.double(), new_features.double(), prototypes.double()
    w = torch.exp(-torch.cdist(mu, old).pow(2) / (2 * sigma ** 2)) + SDC_EPSILON  # (C, B)
    return w @ (new - old), w.sum(1)


class LwFPrototypes(Method):
    """LwF on a cosine head, then NCM on class prototypes (the authors' ``lwf.py`` with
    ``"cosine": true``, ``"NCM": true``).

    - Base task: ``CE(sigma cos(f, w), y)`` over its classes (:class:`~rdfcil.nets.CosineHead`).
    - Incremental task: ``CE(z[:, n_old:], y - n_old) + drift_lamda * KD_T(z[:, :n_old], z_old)``
      (:func:`lwf_loss`, T = ``kd_temperature``), every parameter trained for ``drift_epochs`` at
      ``lr_incremental``, milestones ``drift_milestones``, weight decay ``drift_weight_decay``.
    - After each task the statistics pass stores ``mu_c = mean f(x)`` of its new classes
      (unaugmented training images, eval mode) and moves the old ones by the method's drift
      compensation (:meth:`compensate`; SDC before it with ``sdc``).
    - A test image goes to ``argmin_c ||f/||f|| - mu_c/||mu_c||||^2`` (the authors' ``_eval_ncm``),
      on every task, the base task included."""

    family = "drift"
    classifier = "NCM (drift-compensated prototypes)"
    preset_source = "drift"
    head = "cosine"
    keeps_old_model = True
    keys = frozenset({"drift_lamda", "kd_temperature", "drift_epochs", "drift_milestones", "drift_weight_decay",
                      "sdc", "sdc_sigma", "drift_augment"})

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.prototypes = torch.zeros(0, model.feature_dim, device=model.device)  # (classes seen, d)

    # -- training ----------------------------------------------------------------------------
    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config
        epochs = c.epochs if c.drift_epochs is None else c.drift_epochs
        milestones = [m for m in (c.milestones if c.drift_milestones is None else c.drift_milestones) if m < epochs]

        def loss(x, y):
            logits = self.model(x)
            with torch.no_grad():
                old_logits = self.old_model(x)
            return lwf_loss(logits, old_logits, y, task.n_old, c.drift_lamda, c.kd_temperature)
        return [Phase("train", epochs, self.lr(task), list(self.model.parameters()), loss, task.classes, milestones,
                      weight_decay=c.drift_weight_decay)]

    # -- prototypes --------------------------------------------------------------------------
    def needs_statistics(self, task: Task) -> bool:
        return True

    def statistics(self, task: Task, batches, reduce) -> None:
        count, total, _, _ = class_sums(self.model, task.classes, batches, reduce)
        old = self.prototypes[:task.n_old]
        if task.index > 0:
            if self.config.sdc:
                old = self.sdc(old, batches, reduce)
            old = self.compensate(task, old, batches, reduce)
        self.prototypes = torch.cat([old.float(), (total / count[:, None]).float()])

    def compensate(self, task: Task, prototypes: torch.Tensor, batches: Callable[..., Iterator],
                   reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The old prototypes ``(n_old, d)`` moved to the new feature space (none here: LwF + NCM)."""
        return prototypes

    def sdc(self, prototypes: torch.Tensor, batches, reduce) -> torch.Tensor:
        """``mu_c + sum_i w_ci (f_new_i - f_old_i) / sum_i w_ci`` over the task's training images
        (:func:`sdc_displacement`, the authors' ``displacement``)."""
        moved = torch.zeros_like(prototypes, dtype=torch.float64)
        weights = torch.zeros(len(prototypes), dtype=torch.float64, device=prototypes.device)
        for x, _ in batches(augment=self.config.drift_augment):
            m, w = sdc_displacement(self.old_model.features(x), self.model.features(x), prototypes,
                                    self.config.sdc_sigma)
            moved, weights = moved + m, weights + w
        return (prototypes.double() + reduce(moved) / reduce(weights)[:, None]).float()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``-||f/||f|| - mu_c/||mu_c||||^2`` for every stored prototype: (B, classes seen)."""
        features = self.model.features(x)
        with exact(x.device):
            return -ncm_distances(features.float(), self.prototypes)

    # -- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"prototypes": self.prototypes}

    def load_state_dict(self, state: dict, task: Task) -> None:
        super().load_state_dict(state, task)
        self.prototypes = state["prototypes"].to(self.model.device)
