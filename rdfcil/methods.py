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
from .nets import model_for


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
    on_epoch_end: Callable[[], None] | None = None  # called by the engine after each epoch


class Method:
    """Finetune: global CE on the new task's data over every seen class; no memory of the past."""

    uses_generator = False
    keeps_old_model = False
    carries_generator = False  # ABD repository: one generator (and its Adam state) for every task

    def __init__(self, config, model: nn.Module, spec):
        self.config, self.model, self.spec = config, model, spec
        self.old_model: nn.Module | None = None
        self.generator: Generator | None = None
        self.generator_optimizer: torch.optim.Optimizer | None = None
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

    def carry(self) -> bool:
        """Whether the generator and its Adam state go on from task to task (``generator_carry``)."""
        return self.carries_generator and self.config.generator_carry

    def new_generator(self) -> Generator:
        c = self.config
        generator = build_generator(c, self.spec, self.model.device)
        if self.carry():
            self.generator_optimizer = torch.optim.Adam(generator.parameters(), lr=c.inversion_lr)
        return generator

    def invert(self, task: Task, progress_factory=None, check=None) -> dict:
        c = self.config
        if self.generator is None or not self.carry():
            self.generator = self.new_generator()
        weights = dict(content_temperature=c.content_temperature, alpha_cb=c.alpha_cb,
                       alpha_pr=c.alpha_pr, alpha_rf=c.alpha_rf)
        bar = progress_factory(c.inversion_steps, f"task {task.index} inversion") if progress_factory else None
        history = train_generator(self.generator, self.old_model, c.inversion_steps,
                                  c.inversion_batch_size or c.batch_size, c.inversion_lr, weights, bar, check,
                                  c.precision, self.generator_optimizer)
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
        if self.generator_optimizer is not None:
            state["generator_optimizer"] = self.generator_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict, task: Task) -> None:
        """Restore after a finished ``task``: the old model is the checkpoint's model."""
        if (self.keeps_old_model or self.uses_generator) and not task.is_last:
            self.old_model = frozen_copy(self.model)
        if "generator" in state:
            self.generator = self.new_generator()
            self.generator.load_state_dict(state["generator"])
            self.generator.eval()
            if self.generator_optimizer is not None and "generator_optimizer" in state:
                self.generator_optimizer.load_state_dict(state["generator_optimizer"])


class Finetune(Method):
    """Lower bound: plain CE on each new task with a growing head."""


class Joint(Method):
    """Upper bound: at task t, train on the real data of every class seen so far. With
    ``joint_from_scratch`` (ABD's oracle) every task starts from freshly initialised weights
    and runs the base task's epochs and learning rate; otherwise it continues from the last."""

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if self.config.joint_from_scratch and task.index > 0:
            fresh = model_for(self.config, self.spec, self.model.device)
            for layer in self.model.head.tasks:
                fresh.head.add_task(layer.out_features)
            self.model.load_state_dict(fresh.state_dict())

    def train_epochs(self, task: Task) -> int:
        return super().train_epochs(Task(0, task.classes, task.num_tasks) if self.config.joint_from_scratch else task)

    def lr(self, task: Task) -> float:
        return self.config.lr if self.config.joint_from_scratch else super().lr(task)

    def incremental_phases(self, task: Task) -> list[Phase]:
        return [self.phase("train", task, self.base_loss(task), classes=task.seen)]


class LwF(Method):
    """``L = CE(z, y) + kd_weight * L_kd(z[:, :n_old], z_old)`` on the new real data (Li & Hoiem;
    the ABD repository's form: soft cross-entropy at T = 2, no T^2 unless ``kd_t2``)."""

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


class DeepInversion(Method):
    """Synthetic replay as the ABD repository runs it (``deepinversion_replay = published``),
    real batch ``x`` and synthetic batch ``x_s`` in one forward:
    ``CE(z(x), y) + kd_weight * [L_kd(z(x)[:, :n_old], z_old(x)) + L_kd_seen(z(x_s), z_old(x_s))]``,
    the CE on the real half only, ``L_kd_seen`` over every seen class with the new classes'
    targets set to zero. ``global_ce``: the package's former loss, ``CE`` over real + synthetic
    (argmax labels) and ``L_kd`` over the old classes on both."""

    uses_generator = True
    carries_generator = True

    def incremental_phases(self, task: Task) -> list[Phase]:
        c = self.config

        def published(x, y):
            x_s, _, old_logits_s = self.replay.batch()
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


class ABD(Method):
    """Always Be Dreaming (Smith et al. 2021), as its repository runs it: local CE on the real
    data, a global CE on real + synthetic computed on detached features (only the head learns
    from it), and ``abd_mu * ||W_old (f - f_old)||^2 / n_old`` feature distillation through the
    old head. With ``abd_ce_weighting`` each CE sample is weighted ``n_old / n_seen`` (old
    label) or ``n_new / n_seen`` (new label) and averaged over the batch. (ABD's code takes the
    detached features from a second, no-grad forward in training mode, which moves the
    BatchNorm running statistics once more per step; here they are the first forward's.)"""

    uses_generator = True
    carries_generator = True

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

    uses_generator = True

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.projections: L.RelationProjections | None = None

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
            x_s, y_s, old_logits_s = self.replay.batch()
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
        self.counts = torch.zeros(num_classes, device=device)
        self.weights = torch.ones(num_classes, device=device)
        self.per_step = per_step

    def add(self, labels: torch.Tensor) -> None:
        self.counts.add_(torch.bincount(labels, minlength=len(self.counts)).float())
        if self.per_step:
            self.weights = L.class_weights(self.counts)

    def epoch_end(self) -> None:
        if not self.per_step:
            self.weights = L.class_weights(self.counts)


METHOD_CLASSES = {"finetune": Finetune, "joint": Joint, "lwf": LwF, "deepinversion": DeepInversion,
                  "abd": ABD, "rdfcil": RDFCIL}


# Config keys read only by some methods (the rest read the shared protocol and optimiser keys).
INVERSION_KEYS = {"inversion_steps", "inversion_lr", "inversion_batch_size", "z_dim", "generator_width",
                  "content_temperature", "alpha_cb", "alpha_pr", "alpha_rf", "synthetic_pool",
                  "coverage_samples"}
METHOD_KEYS = {
    "rdfcil": {"refine_lr", "lambda_ce", "lambda_hkd", "lambda_rkd", "rkd", "local_ce", "refine",
               "rrl_forward", "refine_counts"} | INVERSION_KEYS,
    "abd": {"abd_mu", "abd_ce_weighting", "generator_carry"} | INVERSION_KEYS,
    "deepinversion": {"kd_temperature", "kd_weight", "kd_t2", "deepinversion_replay", "generator_carry"}
    | INVERSION_KEYS,
    "lwf": {"kd_temperature", "kd_weight", "kd_t2"},
    "joint": {"joint_from_scratch"},
}


def unused_keys(method: str) -> set[str]:
    """Method-specific keys that ``method`` does not read."""
    used = METHOD_KEYS.get(method, set())
    return set().union(*METHOD_KEYS.values()) - used


def build_method(config, model, spec) -> Method:
    return METHOD_CLASSES[config.method](config, model, spec)
