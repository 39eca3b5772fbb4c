"""ABD: Always Be Dreaming (Smith et al., ICCV 2021)."""

from __future__ import annotations

import torch

from .. import losses as L
from .base import Method, Phase, Task, register
from .replay import InversionReplay


@register
class ABD(Method):
    """Always Be Dreaming (Smith et al. 2021), as its repository runs it: local CE on the real
    data, a global CE on real + synthetic computed on detached features (only the head learns
    from it), and ``abd_mu * ||W_old (f - f_old)||^2 / n_old`` feature distillation through the
    old head. With ``abd_ce_weighting`` each CE sample is weighted ``n_old / n_seen`` (old
    label) or ``n_new / n_seen`` (new label) and averaged over the batch. (ABD's code takes the
    detached features from a second, no-grad forward in training mode, which moves the
    BatchNorm running statistics once more per step; here they are the first forward's.)"""

    name, label, color, rank = "abd", "ABD", "#4477AA", 30
    family, citation = "inversion", "Smith et al., ICCV 2021"
    faithful = "the ABD repository's losses (local CE, weighted global CE, feature KD with mu 0.1) and script settings, one carried generator"
    preset_source = "abd"
    keys = frozenset({"abd_mu", "abd_ce_weighting", "generator_carry"}) | InversionReplay.keys

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.inversion = InversionReplay(config, spec, model.device, carry=config.generator_carry)

    @classmethod
    def vanishing_losses(cls, config, task_index: int, n_old: int, n_new: int) -> list[str]:
        lost = super().vanishing_losses(config, task_index, n_old, n_new)
        if task_index > 0 and n_new == 1:
            lost.append("local_ce (the cross-entropy over the task's new classes)")
        return lost

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config

        def loss(x, y):
            inputs, labels, _ = self.with_replay(x, y)
            logits, features = self.model(inputs, features=True)
            with torch.no_grad():
                old_features = self.old_model.features(inputs)
            old_head = self.old_model.head.weight
            n, head_logits = len(x), self.model.head(features.detach())
            if c.abd_ce_weighting:
                w = L.abd_sample_weights(labels, task.n_old, task.seen.stop)
                ce = {"local_ce": L.sample_weighted_ce(logits[:n, task.n_old:], y - task.n_old, w[:n]),
                      "global_ce": L.sample_weighted_ce(head_logits, labels, w)}
            else:
                ce = {"local_ce": L.local_ce(logits[:n], y, task.n_old), "global_ce": L.global_ce(head_logits, labels)}
            return {**ce, "feature_kd": c.abd_mu * L.feature_distillation(features, old_features, old_head)}
        return [self.phase("train", task, loss)]
