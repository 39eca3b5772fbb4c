"""The inversion replay component that DeepInversion, ABD and R-DFCIL share."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..graphs import fused_optimizer, static_address
from ..inversion import Generator, SyntheticReplay, build_generator, class_coverage, loss_weights, sample, train_generator
from ..precision import precision_of
from .base import Task


class InversionReplay:
    """Model inversion after a task and synthetic replay during the next (docs/methods/inversion.md, "Model inversion"):
    the component DeepInversion, ABD and R-DFCIL share.

    ``invert``: train the generator ``G`` against the frozen old model
    (:func:`inversion.train_generator`; a fresh ``G`` each task, or, with ``carry``, one ``G``
    and its Adam state for every task as the ABD repository does), then record the class
    coverage of ``coverage_samples`` synthetic labels. ``batch``: a synthetic batch
    ``(x_s, argmax z_old(x_s), z_old(x_s))`` for the current task
    (:class:`inversion.SyntheticReplay`); with ``padded``, ``z_old`` over every class of the old
    model's padded head (``nets.IncrementalHead``). A pool (``synthetic_pool``) lives in the same
    tensors for the whole run, refilled in place each task and marked a static address: a
    compiled step reads it where it is instead of copying it in at every replay."""

    keys = frozenset({"inversion_steps", "inversion_lr", "inversion_batch_size", "z_dim", "generator_width",
                      "content_temperature", "alpha_cb", "alpha_pr", "alpha_rf", "synthetic_pool",
                      "coverage_samples"})

    def __init__(self, config, spec, device, carry: bool = False, padded: bool = False):
        self.config, self.spec, self.device, self.carry, self.padded = config, spec, device, carry, padded
        self.pool: tuple | None = None
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
            self.replay = SyntheticReplay(self.generator, old_model, c.batch_size, c.synthetic_pool, self.padded)
            self.replay.shard = self.shard
            if self.replay.pool is not None:
                self.replay.pool = self.keep_pool(self.replay.pool)

    def keep_pool(self, drawn: tuple) -> tuple:
        """``drawn`` (images, labels, logits) in the run's pool tensors, same shapes: copied into
        them; the first pool (or one of another shape) becomes them, marked static."""
        if self.pool is not None and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(self.pool, drawn)):
            for kept, new in zip(self.pool, drawn):
                kept.copy_(new)
        else:
            self.pool = tuple(static_address(t) for t in drawn)
        return self.pool

    def batch(self):
        return self.replay.batch()

    def invert(self, old_model: nn.Module, task: Task, progress_factory=None, check=None) -> tuple[dict, dict]:
        """Train ``G`` on ``old_model``; returns (loss history, class coverage info)."""
        c = self.config
        if self.generator is None or not self.carry:
            fresh = self.new_generator()
            if self.generator is not None and not self.carry:  # its tensors keep their addresses
                self.generator.load_state_dict(fresh.state_dict())
            else:
                self.generator = fresh
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
