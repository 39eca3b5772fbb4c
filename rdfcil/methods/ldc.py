"""LwF + LDC: learnable drift compensation (Gomez-Villa et al., ECCV 2024), as the authors'
code runs it (alviur/ldc ``LDC_supervised/models/lwf.py`` with ``"LDC": true``,
``exps/lwf.json``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Phase, Task, register
from .features import exact
from .lwfproto import LwFPrototypes


def projector_loss(projector: nn.Module, old_features: torch.Tensor, new_features: torch.Tensor) -> torch.Tensor:
    """``MSE(P f_old, f_new)``, the mean over the batch and the d features of the squared error
    (``nn.MSELoss()``); ``old_features``, ``new_features`` (B, d), gradients to ``P`` only."""
    return F.mse_loss(projector(old_features.detach().float()), new_features.detach().float())


@register
class LDC(LwFPrototypes):
    """The authors' LwF and prototypes (:class:`~rdfcil.methods.lwfproto.LwFPrototypes`); after
    each incremental task's LwF phase, a projector ``P = Linear(d, d, bias=False)`` (PyTorch's
    init) learns the drift from the old model's features to the new one's on the task's
    training images, ``L = MSE(P f_old(x), f_new(x))``, Adam at ``ldc_lr`` without weight
    decay for ``ldc_epochs`` (both models in eval mode: a head-only phase on the augmented,
    shuffled images, as the authors' train loader gives them); then the statistics pass moves
    every old prototype, ``mu_c <- P mu_c``, and adds the new classes' means."""

    name, label, color, rank = "ldc", "LwF + LDC", "#AA4499", 72
    citation = "Gomez-Villa et al., ECCV 2024"
    faithful = ("the authors' code: LwF on a cosine head (lamda 10, T 2), NCM on prototypes, a d x d projector "
                "trained 20 epochs by Adam (lr 1e-3) on the task's augmented images; AutoAugment not reproduced")
    keys = LwFPrototypes.keys | {"ldc_epochs", "ldc_lr"}

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.projector: nn.Linear | None = None

    def incremental_phases(self, task: Task) -> list[Phase]:
        c, d = self.config, self.model.feature_dim
        projector = nn.Linear(d, d, bias=False, device=self.model.device)
        self.projector = projector

        def loss(x, y):
            with torch.no_grad():
                old, new = self.old_model.features(x), self.model.features(x)
            return {"mse": projector_loss(projector, old, new)}
        return super().incremental_phases(task) + [
            Phase("projector", c.ldc_epochs, c.ldc_lr, list(projector.parameters()), loss, task.classes,
                  train_backbone=False, modules=[projector], weight_decay=0.0, optimizer="adam")]

    def compensate(self, task: Task, prototypes: torch.Tensor, batches, reduce) -> torch.Tensor:
        """``mu_c <- P mu_c`` for every old prototype ``(n_old, d)``."""
        with exact(prototypes.device):
            return self.projector(prototypes.float())

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"projector": self.projector} if self.projector is not None else {}
