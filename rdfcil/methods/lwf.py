"""LwF (Li & Hoiem), as the ABD repository runs it."""

from __future__ import annotations

import torch

from .. import losses as L
from .base import Method, Phase, Task, register


@register
class LwF(Method):
    """``L = CE(z, y) + kd_weight * L_kd(z[:, :n_old], z_old)`` on the new real data (Li & Hoiem;
    the ABD repository's form: soft cross-entropy at T = 2, no T^2 unless ``kd_t2``)."""

    name, label, color, rank = "lwf", "LwF", "#66CCEE", 10
    family, citation = "bound", "Li and Hoiem, ECCV 2016"
    faithful = "soft distillation at T = 2 without the T^2 factor (`kd_t2`), as the ABD repository runs it"
    preset_source = "abd"
    keys = frozenset({"kd_temperature", "kd_weight", "kd_t2"})
    keeps_old_model = True

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config

        def loss(x, y):
            logits = self.model(x)
            with torch.no_grad():
                old_logits = self.old_model(x)
            return {"ce": L.global_ce(logits, y),
                    "kd": c.kd_weight * L.kd(logits[:, :task.n_old], old_logits, c.kd_temperature, c.kd_t2)}
        return [self.phase("train", task, loss)]
