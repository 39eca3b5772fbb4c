"""The methods, each its losses and phases on the one loop of ``engine.py`` (METHOD.md 3-6, 8).

A method answers three questions per task: which phases to run (epochs, learning rate,
parameters, which real classes to iterate, and the loss of one batch), what to do when the task
ends (freeze the old model, invert it), and what to store in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import losses as L
from .inversion import (Generator, SyntheticReplay, build_generator, class_coverage, frozen_copy, sample,
                        train_generator)


@dataclass
class Task:
    """What a method knows about the task at hand."""
    index: int
    classes: range  # remapped labels of this task
    num_tasks: int

    @property
    def n_old(self) -> int:
        return self.classes.start

    @property
    def n_new(self) -> int:
        return len(self.classes)

    @property
    def seen(self) -> range:
        return range(0, self.classes.stop)

    @property
    def is_last(self) -> bool:
        return self.index == self.num_tasks - 1


@dataclass
class Phase:
    """One optimisation phase: SGD over ``parameters`` for ``epochs`` on the real images of
    ``classes``; lr divided by ``1/lr_decay`` at each milestone epoch; ``loss(x, y)`` returns
    the weighted terms, summed by the engine. ``train_backbone=False`` keeps the whole model in
    eval mode (BatchNorm statistics frozen)."""
    name: str
    epochs: int
    lr: float
    parameters: list
    loss: Callable[[torch.Tensor, torch.Tensor], dict]
    classes: range
    milestones: list = field(default_factory=list)
    train_backbone: bool = True
    modules: list = field(default_factory=list)  # extra modules to put in train mode


class Method:
    """Finetune: global CE on the new task's data over every seen class; no memory of the past."""

    uses_generator = False
    keeps_old_model = False

    def __init__(self, config, model: nn.Module, spec):
        self.config, self.model, self.spec = config, model, spec
        self.old_model: nn.Module | None = None
        self.generator: Generator | None = None
        self.replay: SyntheticReplay | None = None

    # -- phases ------------------------------------------------------------------------------
    def train_epochs(self, task: Task) -> int:
        """The base task runs ``epochs - refinement_epochs`` (METHOD.md section 3)."""
        c = self.config
        return c.epochs - c.refinement_epochs if task.index == 0 else c.epochs

    def lr(self, task: Task) -> float:
        c = self.config
        return c.lr if task.index == 0 or c.lr_incremental is None else c.lr_incremental

    def phase(self, name: str, task: Task, loss, epochs: int | None = None, classes: range | None = None,
              extra: tuple = ()) -> Phase:
        epochs = self.train_epochs(task) if epochs is None else epochs
        milestones = [m for m in self.config.milestones if m < epochs]
        return Phase(name, epochs, self.lr(task), list(self.model.parameters()) + [p for m in extra for p in m.parameters()],
                     loss, classes or task.classes, milestones, True, list(extra))

    def phases(self, task: Task) -> list[Phase]:
        if task.index == 0:
            return [self.phase("base", task, self.base_loss(task))]
        return self.incremental_phases(task)

    def base_loss(self, task: Task):
        def loss(x, y):
            return {"ce": L.global_ce(self.model(x), y)}
        return loss

    def incremental_phases(self, task: Task) -> list[Phase]:
        return [self.phase("train", task, self.base_loss(task))]

    def with_replay(self, x, y):
        """The real batch followed by a synthetic one: ``(inputs, labels, old logits of x_s)``."""
        x_s, y_s, old_logits_s = self.replay.batch()
        return torch.cat([x, x_s]), torch.cat([y, y_s]), old_logits_s

    # -- between tasks -----------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        """Called after the task's seed is set; builds the synthetic replay if there is one."""
        if self.generator is not None and task.index > 0:
            c = self.config
            self.replay = SyntheticReplay(self.generator, self.old_model, c.batch_size, c.synthetic_pool)

    def end_task(self, task: Task, progress_factory=None, check=None) -> dict:
        """Freeze the old model; methods with replay invert it (not after the last task)."""
        info: dict = {}
        if (self.keeps_old_model or self.uses_generator) and not task.is_last:
            self.old_model = frozen_copy(self.model)
        if self.uses_generator and not task.is_last:
            info = self.invert(task, progress_factory, check)
        return info

    def invert(self, task: Task, progress_factory=None, check=None) -> dict:
        c = self.config
        self.generator = build_generator(c, self.spec, self.model.device)
        weights = dict(content_temperature=c.content_temperature, alpha_cb=c.alpha_cb,
                       alpha_pr=c.alpha_pr, alpha_rf=c.alpha_rf)
        bar = progress_factory(c.inversion_steps, f"task {task.index} inversion") if progress_factory else None
        history = train_generator(self.generator, self.old_model, c.inversion_steps,
                                  c.inversion_batch_size or c.batch_size, c.inversion_lr, weights, bar, check,
                                  c.precision)
        if bar is not None:
            bar.close()
        _, labels, _ = sample(self.generator, self.old_model, c.coverage_samples)
        coverage = class_coverage(labels, task.seen.stop)
        return {"inversion_history": history, "class_coverage": coverage,
                "classes_covered": sum(1 for n in coverage if n > 0)}

    # -- checkpoint --------------------------------------------------------------------------
    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def state_dict(self) -> dict:
        state = {name: module.state_dict() for name, module in self.extra_modules().items()}
        if self.generator is not None:
            state["generator"] = self.generator.state_dict()
        return state

    def load_state_dict(self, state: dict, task: Task) -> None:
        """Restore after a finished ``task``: the old model is the checkpoint's model."""
        if (self.keeps_old_model or self.uses_generator) and not task.is_last:
            self.old_model = frozen_copy(self.model)
        if "generator" in state:
            self.generator = build_generator(self.config, self.spec, self.model.device)
            self.generator.load_state_dict(state["generator"])
            self.generator.eval()


class Finetune(Method):
    """Lower bound: plain CE on each new task with a growing head."""


class Joint(Method):
    """Upper bound: at task t, train on the real data of every class seen so far."""

    def incremental_phases(self, task: Task) -> list[Phase]:
        return [self.phase("train", task, self.base_loss(task), classes=task.seen)]


class LwF(Method):
    """``L = CE(z, y) + kd_weight * T^2 KL(softmax(z_old/T) || softmax(z[:, :n_old]/T))`` on the
    new real data (Li & Hoiem), T = 2."""

    keeps_old_model = True

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config

        def loss(x, y):
            logits = self.model(x)
            with torch.no_grad():
                old_logits = self.old_model(x)
            return {"ce": L.global_ce(logits, y),
                    "kd": c.kd_weight * L.kd(logits[:, :task.n_old], old_logits, c.kd_temperature)}
        return [self.phase("train", task, loss)]


class DeepInversion(Method):
    """Synthetic replay: ``CE(z, y)`` over real + synthetic with all seen classes, plus
    ``kd_weight * KD_T`` of the old logits on both."""

    uses_generator = True

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config

        def loss(x, y):
            inputs, labels, _ = self.with_replay(x, y)
            logits = self.model(inputs)
            with torch.no_grad():
                old_logits = self.old_model(inputs)
            return {"ce": L.global_ce(logits, labels),
                    "kd": c.kd_weight * L.kd(logits[:, :task.n_old], old_logits, c.kd_temperature)}
        return [self.phase("train", task, loss)]


class ABD(Method):
    """Always Be Dreaming (Smith et al. 2021): local CE on the real data, a global CE on
    real + synthetic computed on detached features (only the head learns from it), and
    ``mu * ||W_old (f - f_old)||^2 / n_old`` feature distillation through the old head."""

    uses_generator = True

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config

        def loss(x, y):
            inputs, labels, _ = self.with_replay(x, y)
            logits, features = self.model(inputs, features=True)
            with torch.no_grad():
                old_features = self.old_model.features(inputs)
            old_head = self.old_model.head.weight
            return {"local_ce": L.local_ce(logits[:len(x)], y, task.n_old),
                    "global_ce": L.global_ce(self.model.head(features.detach()), labels),
                    "feature_kd": c.abd_mu * L.feature_distillation(features, old_features, old_head)}
        return [self.phase("train", task, loss)]


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
            running label counts of this task.
    Ablations: ``rkd`` = angle | distance | none; ``local_ce`` = False uses the global CE over
    real + synthetic in RRL; ``refine`` = False gives RRL all the epochs; ``rrl_forward`` =
    separate | joint.
    """

    uses_generator = True

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.projections: L.RelationProjections | None = None

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"projections": self.projections} if self.projections is not None else {}

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config
        self.projections = L.RelationProjections(self.model.feature_dim, self.model.device)
        refine_epochs = c.refinement_epochs if c.refine else 0
        rrl = self.phase("rrl", task, self.rrl_loss(task), epochs=c.epochs - refine_epochs,
                         extra=(self.projections,))
        if not refine_epochs:
            return [rrl]
        refine = Phase("refine", refine_epochs, c.refine_lr, list(self.model.head.parameters()),
                       self.refine_loss(task), task.classes, [], train_backbone=False)
        return [rrl, refine]

    def rrl_loss(self, task: Task):
        c = self.config
        alpha, beta = L.rrl_weights(task.n_old, task.n_new)

        def loss(x, y):
            x_s, y_s, old_logits_s = self.replay.batch()
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
        counts = torch.zeros(task.seen.stop, device=self.model.device)

        def loss(x, y):
            inputs, labels, old_logits_s = self.with_replay(x, y)
            with torch.no_grad():
                features = self.model.features(inputs)
            logits = self.model.head(features)
            counts.add_(torch.bincount(labels, minlength=len(counts)).float())
            return {"balanced_ce": c.lambda_ce * L.global_ce(logits, labels, L.class_weights(counts)),
                    "hkd": c.lambda_hkd * alpha * beta * L.hkd(logits[len(x):, :task.n_old], old_logits_s)}
        return loss


METHOD_CLASSES = {"finetune": Finetune, "joint": Joint, "lwf": LwF, "deepinversion": DeepInversion,
                  "abd": ABD, "rdfcil": RDFCIL}


# Config keys read only by some methods (the rest read the shared protocol and optimiser keys).
INVERSION_KEYS = {"inversion_steps", "inversion_lr", "inversion_batch_size", "z_dim", "generator_width",
                  "content_temperature", "alpha_cb", "alpha_pr", "alpha_rf", "synthetic_pool",
                  "coverage_samples"}
METHOD_KEYS = {
    "rdfcil": {"refine_lr", "lambda_ce", "lambda_hkd", "lambda_rkd", "rkd", "local_ce", "refine",
               "rrl_forward"} | INVERSION_KEYS,
    "abd": {"abd_mu"} | INVERSION_KEYS,
    "deepinversion": {"kd_temperature", "kd_weight"} | INVERSION_KEYS,
    "lwf": {"kd_temperature", "kd_weight"},
}


def unused_keys(method: str) -> set[str]:
    """Method-specific keys that ``method`` does not read."""
    used = METHOD_KEYS.get(method, set())
    return set().union(*METHOD_KEYS.values()) - used


def build_method(config, model, spec) -> Method:
    return METHOD_CLASSES[config.method](config, model, spec)
