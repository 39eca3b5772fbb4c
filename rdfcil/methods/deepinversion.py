"""DeepInversion's synthetic replay, as the ABD repository runs it."""

from __future__ import annotations

import torch

from .. import losses as L
from .base import Method, Phase, Task, register
from .replay import InversionReplay


@register
class DeepInversion(Method):
    """Synthetic replay as the ABD repository runs it (``deepinversion_replay = published``),
    real batch ``x`` and synthetic batch ``x_s`` in one forward:
    ``CE(z(x), y) + kd_weight * [L_kd(z(x)[:, :n_old], z_old(x)) + L_kd_seen(z(x_s), z_old(x_s))]``,
    the CE on the real half only, ``L_kd_seen`` over every seen class with the new classes'
    targets set to zero. ``global_ce``: the package's former loss, ``CE`` over real + synthetic
    (argmax labels) and ``L_kd`` over the old classes on both."""

    name, label, color, rank = "deepinversion", "DeepInversion", "#CCBB44", 20
    family, citation = "inversion", "Yin et al., CVPR 2020"
    faithful = "the ABD repository's replay: CE on real images, soft KD on synthetic ones with zero targets for new classes (`deepinversion_replay`), one carried generator"
    preset_source = "abd"
    keys = frozenset({"kd_temperature", "kd_weight", "kd_t2", "deepinversion_replay", "generator_carry"}) \
        | InversionReplay.keys

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.inversion = InversionReplay(config, spec, model.device, carry=config.generator_carry)

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config

        def published(x, y):
            x_s, _, old_logits_s = self.inversion.batch()
            logits = self.model(torch.cat([x, x_s]))
            n = len(x)
            with torch.no_grad():
                old_logits = self.old_model(x)
            return {"ce": L.global_ce(logits[:n], y),
                    "kd": c.kd_weight * L.kd(logits[:n, :task.n_old], old_logits, c.kd_temperature, c.kd_t2),
                    "kd_synthetic": c.kd_weight * L.kd_seen(logits[n:], old_logits_s, c.kd_temperature, c.kd_t2)}

        def global_ce(x, y):
            inputs, labels, _ = self.with_replay(x, y)
            logits = self.model(inputs)
            with torch.no_grad():
                old_logits = self.old_model(inputs)
            return {"ce": L.global_ce(logits, labels),
                    "kd": c.kd_weight * L.kd(logits[:, :task.n_old], old_logits, c.kd_temperature, c.kd_t2)}
        return [self.phase("train", task, published if c.deepinversion_replay == "published" else global_ce)]
