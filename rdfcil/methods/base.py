"""The interface between a method and the one loop of ``engine.py``: :class:`Task`,
:class:`Phase`, :class:`Method`, :class:`TaskEnd` and the registry :data:`METHODS`.

A method answers three questions per task: which phases to run (epochs, learning rate,
parameters, which real classes to iterate, and the loss of one batch), what to do when the task
ends (freeze the old model, invert it), and what to store in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .. import losses as L
from ..inversion import frozen_copy

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
