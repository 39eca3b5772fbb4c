"""R-DFCIL (Gao et al., ECCV 2022)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import losses as L
from ..graphs import static_address
from .base import Method, Phase, Task, register
from .replay import InversionReplay


@register
class RDFCIL(Method):
    """R-DFCIL (Gao et al., ECCV 2022): relation-guided representation learning, then
    classifier refinement (docs/methods/inversion.md, "R-DFCIL").

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

    The steps run on the padded head's logits of every class (``nets.IncrementalHead.padded``):
    the old and new classes are masks (``head.seen`` of the old and the current model), the
    weights ``w_ce, w_hkd, w_rkd`` a device tensor, so RRL and refinement compile once for the
    whole run (``task_invariant_steps``).
    """

    name, label, color, rank = "rdfcil", "R-DFCIL", "#EE6677", 40
    family, citation = "inversion", "Gao et al., ECCV 2022"
    faithful = "the R-DFCIL code: cl-lite's ResNets, RRL with two forwards (`rrl_forward`), refinement with class counts over the task (`refine_counts`)"
    keys = frozenset({"refine_lr", "lambda_ce", "lambda_hkd", "lambda_rkd", "rkd", "local_ce", "refine",
                      "rrl_forward", "refine_counts"}) | InversionReplay.keys
    task_invariant_steps = True

    # the fewest samples each relation needs: a distance is normalised by the mean pairwise
    # distance (2 samples), an angle is taken between three
    RKD_SAMPLES = {"distance": 2, "angle": 3}

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        # the published code inverts a fresh G each task
        self.inversion = InversionReplay(config, spec, model.device, padded=True)
        self.projections: L.RelationProjections | None = None
        self.counts: ClassCounts | None = None

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
        fresh = L.RelationProjections(self.model.feature_dim, self.model.device)
        if self.projections is None:
            self.projections = fresh
        else:  # a fresh draw in the same tensors: their addresses stay for the compiled step
            self.projections.load_state_dict(fresh.state_dict())
        width = len(self.model.head.seen)  # the padded head's classes: one counts tensor for the run
        if self.counts is None or len(self.counts.counts) != width:
            self.counts = ClassCounts(width, self.model.device, per_step=c.refine_counts == "refinement")
        self.counts.reset()
        alpha, beta = L.rrl_weights(task.n_old, task.n_new)
        self.weights = torch.tensor([c.lambda_ce * (1 + 1 / alpha) / beta, c.lambda_hkd * alpha * beta,
                                     c.lambda_rkd * alpha * beta], device=self.model.device)
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

        def loss(x, y):
            x_s, y_s, old_logits_s = self.inversion.batch()
            if c.refine_counts == "task":
                self.counts.add(torch.cat([y, y_s]))
            logits, features, logits_s = self.forward_real_and_synthetic(x, x_s)
            seen, old, old_logits_s = self.masks(old_logits_s)
            w_ce, w_hkd, w_rkd = self.weights.unbind()
            if c.local_ce:  # CE over the new classes
                ce = L.masked_ce(logits, y, seen & ~old)
            else:
                ce = L.masked_ce(torch.cat([logits, logits_s]), torch.cat([y, y_s]), seen)
            terms = {"local_ce" if c.local_ce else "global_ce": w_ce * ce,
                     "hkd": w_hkd * L.masked_hkd(logits_s, old_logits_s, old)}
            if c.rkd != "none":
                with torch.no_grad():
                    old_features = self.old_model.features(x)
                projected, projected_old = self.projections(features, old_features)
                relation = L.rkd_angle if c.rkd == "angle" else L.rkd_distance
                terms["rkd"] = w_rkd * relation(projected, projected_old)
            return terms
        return loss

    def masks(self, old_logits: torch.Tensor):
        """``(seen, old, old_logits)``: the bool masks of the seen and the old classes over the
        head's width and the old logits at that width (a head without capacity grows, so the
        old model's are narrower: padded with zeros; a padded head's are already as wide)."""
        seen, old = self.model.head.seen, self.old_model.head.seen
        if len(old) < len(seen):
            old = torch.cat([old, old.new_zeros(len(seen) - len(old))])
            old_logits = F.pad(old_logits, (0, len(seen) - old_logits.shape[1]))
        return seen, old, old_logits

    def forward_real_and_synthetic(self, x, x_s):
        """Logits and features of the real batch, logits of the synthetic batch.
        ``rrl_forward = separate`` (the published code) runs two forwards, so training-mode
        BatchNorm normalises each batch with its own statistics; ``joint`` runs one forward over
        the concatenation (shared statistics, as DeepInversion and ABD do)."""
        if self.config.rrl_forward == "separate":
            logits, features = self.model.padded(x, features=True)
            return logits, features, self.model.padded(x_s)
        logits, features = self.model.padded(torch.cat([x, x_s]), features=True)
        n = len(x)
        return logits[:n], features[:n], logits[n:]

    def refine_loss(self, task: Task):
        c = self.config

        def loss(x, y):
            inputs, labels, old_logits_s = self.with_replay(x, y)
            with torch.no_grad():
                features = self.model.features(inputs)
            logits = self.model.head.padded(features)
            self.counts.add(labels)
            _, w_hkd, _ = self.weights.unbind()
            seen, old, old_logits_s = self.masks(old_logits_s)
            return {"balanced_ce": c.lambda_ce * L.masked_ce(logits, labels, seen, self.counts.weights),
                    "hkd": w_hkd * L.masked_hkd(logits[len(x):], old_logits_s, old)}
        return loss


class ClassCounts:
    """Running label counts of a task and the class weights of the balanced CE (docs/methods/inversion.md, "R-DFCIL"):
    ``w = class_weights(counts)``, starting at 1. ``per_step``: the weights follow every
    ``add``; otherwise they change only at ``epoch_end`` (the published code)."""

    def __init__(self, num_classes: int, device, per_step: bool = False):
        self.counts = static_address(torch.zeros(num_classes, device=device))  # mutated inside the step
        self.weights = torch.ones(num_classes, device=device)
        self.per_step = per_step

    def reset(self) -> None:
        """A new task: counts 0 (in place: the same tensor for the whole run), weights 1."""
        self.counts.zero_()
        self.weights = torch.ones_like(self.counts)

    def add(self, labels: torch.Tensor) -> None:
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))  # bincount syncs on CUDA
        if self.per_step:
            self.weights = L.class_weights(self.counts)

    def epoch_end(self) -> None:
        if not self.per_step:
            self.weights = L.class_weights(self.counts)
