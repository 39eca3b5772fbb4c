"""The interface between a method and the one loop of ``engine.py``: :class:`Task`,
:class:`Phase`, :class:`Method`, :class:`TaskEnd` and the registry :data:`METHODS`.

A method answers three questions per task: which phases to run (epochs, learning rate,
parameters, which real classes to iterate, and the loss of one batch), what to do when the task
ends (freeze the old model, invert it), and what to store in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import torch
from torch import nn

from .. import losses as L
from ..inversion import frozen_copy, refreeze

if TYPE_CHECKING:
    from .replay import InversionReplay


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
    """One optimisation phase: SGD (or Adam, ``optimizer``) over ``parameters`` for ``epochs`` on the real images of
    ``classes``; lr divided by ``1/lr_decay`` at each milestone epoch; ``loss(x, y)`` returns
    the weighted terms, summed by the engine. ``train_backbone=False`` keeps the whole model in
    eval mode (BatchNorm statistics frozen).

    A head-only phase on features sets ``batches(generator) -> iterable of (x, y)`` (e.g.
    features and labels the method made in its statistics pass) and ``num_batches() -> int``
    (batches per epoch): the engine iterates those instead of the real images, ``loss(x, y)``
    receives them, and the phase runs after the task's statistics pass (both callables are
    called only when the phase starts). Under torchrun each process takes its shard of every
    batch, so every process must yield the same batches (draw them with ``generator``)."""
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
    batches: Callable[[torch.Generator], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None
    num_batches: Callable[[], int] | None = None  # batches per epoch of ``batches``
    weight_decay: float | None = None  # None: the run's ``weight_decay``
    optimizer: str = "sgd"  # "sgd" (momentum: the run's ``momentum``) or "adam" (betas 0.9, 0.999), as the authors ran the phase


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
    ``inversion`` (the :class:`InversionReplay` component or None, for the logger),
    ``state_dict`` / ``load_state_dict`` for the checkpoint, and two extension points:

    - ``scores(x)``: a batch's class scores, from which ``engine.evaluate`` predicts
      ``scores[:, :n_seen].argmax(1)`` (default: the model's logits); ``classifier`` names what
      made that prediction in tables;
    - ``needs_statistics(task)`` / ``statistics(task, batches, reduce)``: a pass over the task's
      training images after its SGD phases, without gradients (class means, covariances,
      feature matrices, an analytic head).
    """

    name: str = ""
    keys: frozenset = frozenset()
    label, color, rank = "", "black", 50
    # Where the documentation and the README's methods table place and describe it: its family
    # (``inversion``, ``bound``, ``statistics``, ``analytic``, ``drift``), its paper, and what is
    # as published (empty: the first line of the class docstring stands in).
    family, citation, faithful = "", "", ""
    # Whose published settings the paper preset takes (docs/methods/inversion.md, "Published
    # settings"): "rdfcil" (the R-DFCIL paper's table), "abd" (the ABD repository's scripts, for
    # the baselines it runs), a key of config.BASE_RECIPES ("fecam", "fetril": the authors'
    # base-task schedule) or "analytic" (ACIL, DS-AL: config.ANALYTIC_PAPER, per dataset).
    preset_source = "rdfcil"
    classifier = "linear head"  # what makes the prediction, named in tables ("NCM", "FeCAM (Mahalanobis)", ...)
    head = "linear"  # the model's head (nets.model_for): "linear" (IncrementalHead) or "cosine" (CosineHead)
    keeps_old_model = False
    trains_on_seen = False  # an incremental task trains on the real data of every seen class (Joint)
    # Its steps have the same shapes and constants in every task (padded head, masks, loss weights as
    # device tensors): compiled once for the run. Otherwise each task's steps compile anew (graphs.py).
    task_invariant_steps = False

    def __init__(self, config, model: nn.Module, spec):
        self.config, self.model, self.spec = config, model, spec
        self.old_model: nn.Module | None = None
        self.inversion: InversionReplay | None = None

    # -- what a setting must give the losses (checked before training) ------------------------
    @classmethod
    def batch_needs(cls, config) -> list[tuple[int, str]]:
        """``(images, what needs them)``: the fewest images each process's share of a real (and
        synthetic) training batch may hold. BatchNorm in training mode normalises with the
        batch's statistics: one image gives a degenerate variance."""
        return [(2, "BatchNorm in training mode (batch statistics)")]

    @classmethod
    def vanishing_losses(cls, config, task_index: int, n_old: int, n_new: int) -> list[str]:
        """The loss terms that are identically 0 on a task of ``n_new`` new classes after
        ``n_old`` old ones, e.g. a cross-entropy over one class (``log softmax`` of a single
        logit is 0). The base class: the base task's ``ce`` over one class (every method's
        first task trains on it)."""
        return ["ce (the base task's cross-entropy over its one class)"] if task_index == 0 and n_new == 1 else []

    # -- phases ------------------------------------------------------------------------------
    def train_epochs(self, task: Task) -> int:
        """The base task runs ``epochs - refinement_epochs`` (docs/methods/index.md, "The network")."""
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

    # -- scoring and statistics ---------------------------------------------------------------
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of a batch ``x`` (B, C, H, W) -> (B, n_seen or more), higher is better
        (a distance-based classifier returns minus the distance). ``engine.evaluate`` predicts
        ``scores[:, :n_seen].argmax(1)``. Default: the model's logits."""
        return self.model(x)

    def needs_statistics(self, task: Task) -> bool:
        """Whether the engine runs :meth:`statistics` after the SGD phases of ``task``."""
        return False

    def statistics(self, task: Task, batches: Callable[..., Iterator[tuple[torch.Tensor, torch.Tensor]]],
                   reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """The task-end statistics pass, called by the engine after the task's image phases,
        before its feature phases, ``end_task`` and the evaluation, with the model in eval mode
        under ``torch.no_grad()`` (enable gradients locally if needed).

        ``batches()`` iterates the task's training images of ``task.classes`` once as
        ``(x, y)``: no augmentation, a fixed order, ``batch_size`` images, remapped labels, on
        the run's device; under torchrun this process's shard of each batch (``batches(shard=
        False)``: every image on every process, e.g. for a feature matrix every process needs).
        ``batches(augment=True)``: the same images with the training augmentation (where the
        run augments), a fresh draw on each call, the same in every process.
        ``reduce(t)`` sums ``t`` over the processes (the identity in one process): build
        statistics from sums (counts, feature sums, outer products) so that two processes give
        what one gives. What it computes goes in :meth:`state_dict` so that a resumed run has it."""

    # -- between tasks -----------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        """Called after the task's seed is set; builds the synthetic replay if there is one."""
        if self.inversion is not None:
            self.inversion.begin_task(task, self.old_model)

    def end_task(self, task: Task, progress_factory=None, check=None) -> "TaskEnd":
        """Freeze the old model; a method with inversion inverts it (not after the last task)."""
        if (self.keeps_old_model or self.inversion is not None) and not task.is_last:
            self.old_model = refreeze(self.old_model, self.model)  # in place when the shapes allow
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


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add ``cls`` to :data:`METHODS` under ``cls.name`` (the order of registration is the
    order of the CLI's choices)."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"a method needs a new, non-empty name; got {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def method_keys(name: str) -> frozenset:
    """The method-specific config keys ``name`` reads."""
    return METHODS[name].keys if name in METHODS else frozenset()


def unused_keys(method: str) -> set[str]:
    """Method-specific keys (declared by any registered method) that ``method`` does not read."""
    return set().union(*(m.keys for m in METHODS.values())) - method_keys(method)


def build_method(config, model, spec) -> Method:
    return METHODS[config.method](config, model, spec)
