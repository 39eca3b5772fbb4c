"""R-DFCIL (Gao et al., ECCV 2022)."""

from __future__ import annotations

import torch
from torch import nn

from .. import losses as L
from ..graphs import static_address
from .base import Method, Phase, Task, register
from .replay import InversionReplay


@register
class RDFCIL(Method):
    """R-DFCIL (Gao et al., ECCV 2022): relation-guided representation learning, then
    classifier refinement (METHOD.md sections 5 and 6).

    RRL:    ``w_ce L_lce(real) + w_hkd L_hkd(synthetic) + w_rkd L_rkd(real)`` with
            ``w_ce = lambda_ce (1 + 1/alpha) / beta``, ``w_hkd = lambda_hkd alpha beta``,
            ``w_rkd = lambda_rkd alpha beta``; optimiser over backbone, head and P1, P2. The
            real and the synthetic batch go through the model in two forwards (the published
            code's choice, ``rrl_forward = separate``) or in one (``joint``).
    Refine: backbone frozen (eval mode, no gradient), head only at constant ``refine_lr``:
            ``lambda_ce CE_w(real + synthetic) + w_hkd L_hkd`` with class weights from the
            running label counts: ``refine_counts = task`` (published) counts the real and
            synthetic labels of every step of the task, RRL included, and updates the weights
            at each epoch's end; ``refinement`` counts refinement steps only, updated each step.
    Ablations: ``rkd`` = angle | distance | none; ``local_ce`` = False uses the global CE over
    real + synthetic in RRL; ``refine`` = False gives RRL all the epochs; ``rrl_forward`` =
    separate | joint.
    """

    name, label, color, rank = "rdfcil", "R-DFCIL", "#EE6677", 40
    keys = frozenset({"refine_lr", "lambda_ce", "lambda_hkd", "lambda_rkd", "rkd", "local_ce", "refine",
                      "rrl_forward", "refine_counts"}) | InversionReplay.keys

    # the fewest samples each relation needs: a distance is normalised by the mean pairwise
    # distance (2 samples), an angle is taken between three
    RKD_SAMPLES = {"distance": 2, "angle": 3}

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.inversion = InversionReplay(config, spec, model.device)  # the published code inverts a fresh G each task
        self.projections: L.RelationProjections | None = None

    @classmethod
    def batch_needs(cls, config) -> list[tuple[int, str]]:
        needs = super().batch_needs(config)
        if config.rkd in cls.RKD_SAMPLES:
            needs.append((cls.RKD_SAMPLES[config.rkd], f"rkd {config.rkd} (relations between samples of the batch)"))
        return needs

    @classmethod
    def vanishing_losses(cls, config, task_index: int, n_old: int, n_new: int) -> list[str]:
        lost = super().vanishing_losses(config, task_index, n_old, n_new)
        if task_index > 0 and n_new == 1 and config.local_ce:
            lost.append("local_ce (the cross-entropy over the task's new classes)")
        return lost

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"projections": self.projections} if self.projections is not None else {}

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config
        self.projections = L.RelationProjections(self.model.feature_dim, self.model.device)
        self.counts = ClassCounts(task.seen.stop, self.model.device, per_step=c.refine_counts == "refinement")
        refine_epochs = c.refinement_epochs if c.refine else 0
        rrl = self.phase("rrl", task, self.rrl_loss(task), epochs=c.epochs - refine_epochs,
                         extra=(self.projections,))
        rrl.on_epoch_end = self.counts.epoch_end
        if not refine_epochs:
            return [rrl]
        refine = Phase("refine", refine_epochs, c.refine_lr, list(self.model.head.parameters()),
                       self.refine_loss(task), task.classes, [], train_backbone=False,
                       on_epoch_end=self.counts.epoch_end)
        return [rrl, refine]

    def rrl_loss(self, task: Task):
        c = self.config
        alpha, beta = L.rrl_weights(task.n_old, task.n_new)

        def loss(x, y):
            x_s, y_s, old_logits_s = self.inversion.batch()
            if c.refine_counts == "task":
                self.counts.add(torch.cat([y, y_s]))
            logits, features, logits_s = self.forward_real_and_synthetic(x, x_s)
            if c.local_ce:
                ce = L.local_ce(logits, y, task.n_old)
            else:
                ce = L.global_ce(torch.cat([logits, logits_s]), torch.cat([y, y_s]))
            terms = {"local_ce" if c.local_ce else "global_ce": c.lambda_ce * (1 + 1 / alpha) / beta * ce,
                     "hkd": c.lambda_hkd * alpha * beta * L.hkd(logits_s[:, :task.n_old], old_logits_s)}
            if c.rkd != "none":
                with torch.no_grad():
                    old_features = self.old_model.features(x)
                projected, projected_old = self.projections(features, old_features)
                relation = L.rkd_angle if c.rkd == "angle" else L.rkd_distance
                terms["rkd"] = c.lambda_rkd * alpha * beta * relation(projected, projected_old)
            return terms
        return loss

    def forward_real_and_synthetic(self, x, x_s):
        """Logits and features of the real batch, logits of the synthetic batch.
        ``rrl_forward = separate`` (the published code) runs two forwards, so training-mode
        BatchNorm normalises each batch with its own statistics; ``joint`` runs one forward over
        the concatenation (shared statistics, as DeepInversion and ABD do)."""
        if self.config.rrl_forward == "separate":
            logits, features = self.model(x, features=True)
            return logits, features, self.model(x_s)
        logits, features = self.model(torch.cat([x, x_s]), features=True)
        n = len(x)
        return logits[:n], features[:n], logits[n:]

    def refine_loss(self, task: Task):
        c = self.config
        alpha, beta = L.rrl_weights(task.n_old, task.n_new)

        def loss(x, y):
            inputs, labels, old_logits_s = self.with_replay(x, y)
            with torch.no_grad():
                features = self.model.features(inputs)
            logits = self.model.head(features)
            self.counts.add(labels)
            return {"balanced_ce": c.lambda_ce * L.global_ce(logits, labels, self.counts.weights),
                    "hkd": c.lambda_hkd * alpha * beta * L.hkd(logits[len(x):, :task.n_old], old_logits_s)}
        return loss


class ClassCounts:
    """Running label counts of a task and the class weights of the balanced CE (section 6):
    ``w = class_weights(counts)``, starting at 1. ``per_step``: the weights follow every
    ``add``; otherwise they change only at ``epoch_end`` (the published code)."""

    def __init__(self, num_classes: int, device, per_step: bool = False):
        self.counts = static_address(torch.zeros(num_classes, device=device))  # mutated inside the step
        self.weights = torch.ones(num_classes, device=device)
        self.per_step = per_step

    def add(self, labels: torch.Tensor) -> None:
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))  # bincount syncs on CUDA
        if self.per_step:
            self.weights = L.class_weights(self.counts)

    def epoch_end(self) -> None:
        if not self.per_step:
            self.weights = L.class_weights(self.counts)
