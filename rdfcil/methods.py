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
from .graphs import fused_optimizer, static_address
from .inversion import (Generator, SyntheticReplay, build_generator, class_coverage, frozen_copy, loss_weights,
                        sample, train_generator)
from .nets import model_for
from .precision import precision_of


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
    """The base of every method: global CE on the new task's data over every seen class (that
    alone is Finetune), and the interface the engine uses.

    A method declares itself in its class: ``name`` (the config's ``method``), ``keys`` (the
    config keys only some methods read: a finished run of this method is reused when any other
    key of that kind differs), ``label``, ``color`` and ``rank`` (its place in tables and plots,
    lower bounds first). ``@register`` puts it in :data:`METHODS`, from which the config's
    choices, the CLI, the run-folder comparison and the tables are derived.

    The engine talks to a method through: ``begin_task``, ``phases``, ``end_task`` (a
    :class:`TaskEnd`), ``set_shard`` (this process's share of a synthetic batch under torchrun),
    ``synchronised_modules`` (modules every process must hold equal after a task),
    ``inversion`` (the :class:`InversionReplay` component or None, for the logger), and
    ``state_dict`` / ``load_state_dict`` for the checkpoint.
    """

    name: str = ""
    keys: frozenset = frozenset()
    label, color, rank = "", "black", 50
    # Whose published settings the paper preset takes (METHOD.md sections 7, 8): "rdfcil" (the
    # R-DFCIL paper's table) or "abd" (the ABD repository's scripts, for the baselines it runs).
    preset_source = "rdfcil"
    keeps_old_model = False
    trains_on_seen = False  # an incremental task trains on the real data of every seen class (Joint)

    def __init__(self, config, model: nn.Module, spec):
        self.config, self.model, self.spec = config, model, spec
        self.old_model: nn.Module | None = None
        self.inversion: InversionReplay | None = None

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
        x_s, y_s, old_logits_s = self.inversion.batch()
        return torch.cat([x, x_s]), torch.cat([y, y_s]), old_logits_s

    # -- between tasks -----------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        """Called after the task's seed is set; builds the synthetic replay if there is one."""
        if self.inversion is not None:
            self.inversion.begin_task(task, self.old_model)

    def end_task(self, task: Task, progress_factory=None, check=None) -> "TaskEnd":
        """Freeze the old model; a method with inversion inverts it (not after the last task)."""
        if (self.keeps_old_model or self.inversion is not None) and not task.is_last:
            self.old_model = frozen_copy(self.model)
        if self.inversion is None or task.is_last:
            return TaskEnd()
        history, info = self.inversion.invert(self.old_model, task, progress_factory, check)
        return TaskEnd({"inversion": history}, info)

    def set_shard(self, shard: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Under torchrun each process trains on ``shard(batch)``: so too the synthetic batches."""
        if self.inversion is not None:
            self.inversion.shard = shard
            if self.inversion.replay is not None:
                self.inversion.replay.shard = shard

    def synchronised_modules(self) -> list[nn.Module]:
        """Modules every process must hold equal after ``end_task`` (broadcast from rank 0)."""
        return [self.inversion.generator] if self.inversion is not None and self.inversion.generator else []

    # -- checkpoint --------------------------------------------------------------------------
    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def state_dict(self) -> dict:
        state = {name: module.state_dict() for name, module in self.extra_modules().items()}
        return state | (self.inversion.state_dict() if self.inversion is not None else {})

    def load_state_dict(self, state: dict, task: Task) -> None:
        """Restore after a finished ``task``: the old model is the checkpoint's model."""
        if (self.keeps_old_model or self.inversion is not None) and not task.is_last:
            self.old_model = frozen_copy(self.model)
        if self.inversion is not None:
            self.inversion.load_state_dict(state)


@dataclass
class TaskEnd:
    """What a method reports when a task ends: the histories of its stages (``{"inversion":
    {term: [per step]}}``; the engine times each stage) and values for the run's record
    (``class_coverage``, ``classes_covered``)."""
    histories: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class InversionReplay:
    """Model inversion after a task and synthetic replay during the next (METHOD.md section 4):
    the component DeepInversion, ABD and R-DFCIL share.

    ``invert``: train the generator ``G`` against the frozen old model
    (:func:`inversion.train_generator`; a fresh ``G`` each task, or, with ``carry``, one ``G``
    and its Adam state for every task as the ABD repository does), then record the class
    coverage of ``coverage_samples`` synthetic labels. ``batch``: a synthetic batch
    ``(x_s, argmax z_old(x_s), z_old(x_s))`` for the current task
    (:class:`inversion.SyntheticReplay`)."""

    keys = frozenset({"inversion_steps", "inversion_lr", "inversion_batch_size", "z_dim", "generator_width",
                      "content_temperature", "alpha_cb", "alpha_pr", "alpha_rf", "synthetic_pool",
                      "coverage_samples"})

    def __init__(self, config, spec, device, carry: bool = False):
        self.config, self.spec, self.device, self.carry = config, spec, device, carry
        self.generator: Generator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.replay: SyntheticReplay | None = None
        self.shard: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor

    def new_generator(self) -> Generator:
        c = self.config
        generator = build_generator(c, self.spec, self.device)
        if self.carry:
            self.optimizer = torch.optim.Adam(generator.parameters(), lr=c.inversion_lr,
                                              **fused_optimizer(self.device, c.graphs))
        return generator

    def begin_task(self, task: Task, old_model: nn.Module | None) -> None:
        if self.generator is not None and task.index > 0:
            c = self.config
            self.replay = SyntheticReplay(self.generator, old_model, c.batch_size, c.synthetic_pool)
            self.replay.shard = self.shard

    def batch(self):
        return self.replay.batch()

    def invert(self, old_model: nn.Module, task: Task, progress_factory=None, check=None) -> tuple[dict, dict]:
        """Train ``G`` on ``old_model``; returns (loss history, class coverage info)."""
        c = self.config
        if self.generator is None or not self.carry:
            self.generator = self.new_generator()
        weights = loss_weights(c)
        bar = progress_factory(c.inversion_steps, f"task {task.index} inversion") if progress_factory else None
        history = train_generator(self.generator, old_model, c.inversion_steps,
                                  c.inversion_batch_size or c.batch_size, c.inversion_lr, weights, bar, check,
                                  precision_of(c, "inversion"), self.optimizer, c.graphs, c.sync_interval)
        if bar is not None:
            bar.close()
        _, labels, _ = sample(self.generator, old_model, c.coverage_samples)
        coverage = class_coverage(labels, task.seen.stop)
        return history, {"class_coverage": coverage, "classes_covered": sum(1 for n in coverage if n > 0)}

    def state_dict(self) -> dict:
        state = {"generator": self.generator.state_dict()} if self.generator is not None else {}
        return state | ({"generator_optimizer": self.optimizer.state_dict()} if self.optimizer is not None else {})

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator = self.new_generator()
            self.generator.load_state_dict(state["generator"])
            self.generator.eval()
            if self.optimizer is not None and "generator_optimizer" in state:
                self.optimizer.load_state_dict(state["generator_optimizer"])


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add ``cls`` to :data:`METHODS` under ``cls.name`` (the order of registration is the
    order of the CLI's choices)."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"a method needs a new, non-empty name; got {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


@register
class Finetune(Method):
    """Lower bound: plain CE on each new task with a growing head."""

    name, label, color, rank = "finetune", "Finetune", "#BBBBBB", 0
    preset_source = "abd"


@register
class Joint(Method):
    """Upper bound: at task t, train on the real data of every class seen so far. With
    ``joint_from_scratch`` (ABD's oracle) every task starts from freshly initialised weights
    and runs the base task's epochs and learning rate; otherwise it continues from the last."""

    name, label, color, rank = "joint", "Joint", "#228833", 90
    preset_source = "abd"
    keys = frozenset({"joint_from_scratch"})
    trains_on_seen = True

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


@register
class LwF(Method):
    """``L = CE(z, y) + kd_weight * L_kd(z[:, :n_old], z_old)`` on the new real data (Li & Hoiem;
    the ABD repository's form: soft cross-entropy at T = 2, no T^2 unless ``kd_t2``)."""

    name, label, color, rank = "lwf", "LwF", "#66CCEE", 10
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


@register
class DeepInversion(Method):
    """Synthetic replay as the ABD repository runs it (``deepinversion_replay = published``),
    real batch ``x`` and synthetic batch ``x_s`` in one forward:
    ``CE(z(x), y) + kd_weight * [L_kd(z(x)[:, :n_old], z_old(x)) + L_kd_seen(z(x_s), z_old(x_s))]``,
    the CE on the real half only, ``L_kd_seen`` over every seen class with the new classes'
    targets set to zero. ``global_ce``: the package's former loss, ``CE`` over real + synthetic
    (argmax labels) and ``L_kd`` over the old classes on both."""

    name, label, color, rank = "deepinversion", "DeepInversion", "#CCBB44", 20
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
    preset_source = "abd"
    keys = frozenset({"abd_mu", "abd_ce_weighting", "generator_carry"}) | InversionReplay.keys

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.inversion = InversionReplay(config, spec, model.device, carry=config.generator_carry)

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

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.inversion = InversionReplay(config, spec, model.device)  # the published code inverts a fresh G each task
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


def method_keys(name: str) -> frozenset:
    """The method-specific config keys ``name`` reads."""
    return METHODS[name].keys if name in METHODS else frozenset()


def unused_keys(method: str) -> set[str]:
    """Method-specific keys (declared by any registered method) that ``method`` does not read."""
    return set().union(*(m.keys for m in METHODS.values())) - method_keys(method)


def build_method(config, model, spec) -> Method:
    return METHODS[config.method](config, model, spec)
