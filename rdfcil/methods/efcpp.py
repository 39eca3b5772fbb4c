"""EFC++ (Magistri et al., arXiv 2503.10439, 2025), as the authors' code runs it
(simomagi/elastic_feature_consolidation: ``continual_learning/ElasticFeatPlusPlus.py``,
``utils/OptimizerManager.py``, ``utilities/parse_utils.py``).

EFC's penalty and prototype drift with a different use of the prototypes: the backbone trains
with the new head alone (no prototype replay in that phase), then every head row is re-balanced
on frozen features, the current task's and samples of the old classes' Gaussians.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .. import losses as L
from ..data import host_to_device
from .base import Phase, Task, register
from .efc import EFC, efm_loss, efm_sum, gaussian_samples, non_batchnorm_parameters
from .features import exact


@register
class EFCPlusPlus(EFC):
    """EFC++. Base task as EFC's. Each later task, BatchNorm frozen:

    1. Adam on the backbone and the new head only: ``L = CE(new head; x) + mean (f_t -
       f_{t-1})^T (lambda E_{t-1} + eta I) (f_t - f_{t-1})`` (the old rows stay as they are,
       Adam's weight decay included);
    2. the statistics pass: the old class means move by EFC's EFM-weighted drift
       (``efc_protoupdate``, with ``E_{t-1}``), the current images' features are kept, the new
       classes' Gaussians are added;
    3. prototype re-balancing: SGD on every head row with the backbone frozen, CE over all seen
       classes on the current features and, at every epoch, ``n_c`` fresh samples of each old
       class's Gaussian (``n_c`` its training images), ``efcpp_balance_*``;
    4. ``E_t`` from the current features and the re-balanced head (the authors compute it after
       the re-balancing).

    Test images are classified by the linear head over every seen class."""

    name, label, color, rank = "efcpp", "EFC++", "#EE8866", 71
    family, citation = "drift", "Magistri et al., arXiv 2503.10439, 2025"
    faithful = ("EFM regulariser with the new head alone, EFM-weighted drift update, head re-balancing on current "
                "features and Gaussian samples (SGD lr 1e-3, 50 epochs, batch 256) as the authors' code; statistics "
                "on augmented images (`drift_augment`), the re-balancing's current features from one such pass")
    keys = frozenset({"efc_lamb", "efc_damping", "efc_protoupdate", "efc_self_rotation", "efcpp_balance_epochs",
                      "efcpp_balance_lr", "efcpp_balance_batch", "efcpp_balance_weight_decay", "drift_augment"})

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.train_x = self.train_y = None  # the current task's features (all images, every process)
        self.n_old = 0

    # -- phases --------------------------------------------------------------------------------
    def incremental_phases(self, task: Task) -> list[Phase]:
        c, model = self.config, self.model
        self.n_old = task.n_old
        new_head = nn.Linear(model.feature_dim, task.n_new, bias=False, device=model.device)
        with torch.no_grad():
            new_head.weight.copy_(model.head.weight[task.n_old:])

        def write_back() -> None:  # the new rows into the model's head, for the next epoch's evaluation and phase
            with torch.no_grad():
                model.head.padded_weight[task.classes.start:task.classes.stop] = new_head.weight

        def loss(x, y):
            with torch.no_grad():
                old_features = self.old_model.features(x)
            features = model.features(x)
            return {"ce": F.cross_entropy(new_head(features).float(), y - task.n_old),
                    "efm": efm_loss(features, old_features, self.efm, c.efc_lamb, c.efc_damping)}

        def balance_loss(x, y):
            return {"ce": L.global_ce(model.head(x), y)}

        train = Phase("train", self.train_epochs(task), self.lr(task),
                      non_batchnorm_parameters(model.backbone) + [new_head.weight], loss, task.classes, [],
                      train_backbone=False, on_epoch_end=write_back, optimizer="adam")
        balance = Phase("balance", c.efcpp_balance_epochs, c.efcpp_balance_lr, [model.head.padded_weight],
                        balance_loss, task.seen, [], train_backbone=False, batches=self.balance_batches,
                        num_batches=self.balance_steps, weight_decay=c.efcpp_balance_weight_decay, optimizer="sgd")
        return [train, balance]

    def sample_sizes(self) -> torch.Tensor:
        """``n_c`` Gaussian samples per old class per re-balancing epoch: its training images. (n_old,) on the host."""
        return self.counts[:self.n_old].round().long().cpu()

    def balance_steps(self) -> int:
        return math.ceil((len(self.train_y) + int(self.sample_sizes().sum())) / self.config.efcpp_balance_batch)

    def balance_batches(self, generator: torch.Generator):
        """One re-balancing epoch (``balance_head``): the current features and fresh Gaussian samples
        of the old classes, shuffled by ``generator``, ``efcpp_balance_batch`` per batch (the last
        one smaller)."""
        device, size = self.model.device, self.config.efcpp_balance_batch
        labels = torch.repeat_interleave(torch.arange(self.n_old), self.sample_sizes())
        noise = torch.randn(len(labels), self.means.shape[1], generator=generator)
        labels = host_to_device(labels, device)
        samples = gaussian_samples(self.means[:self.n_old], self.factors[:self.n_old], labels,
                                   host_to_device(noise, device))
        x, y = torch.cat([self.train_x, samples]), torch.cat([self.train_y, labels.to(self.train_y.dtype)])
        order = host_to_device(torch.randperm(len(y), generator=generator), device)
        for start in range(0, len(order), size):
            chosen = order[start:start + size]
            yield x[chosen], y[chosen]

    # -- statistics ----------------------------------------------------------------------------
    def statistics(self, task: Task, batches, reduce) -> None:
        """The drift update and the current features (every image on every process), then the new
        classes' Gaussians from reduced sums; ``E`` here only after the base task (later tasks:
        :meth:`end_task`, after the re-balancing)."""
        if task.index:
            old, new, labels = self.old_and_new_features(batches)
            if self.config.efc_protoupdate is not None:
                self.update_means(task, old, new, labels)
            self.train_x, self.train_y = new, labels
        count, total, squares, efm = self.class_sums(task, batches, reduce, with_efm=task.index == 0)
        self.add_gaussians(count, total, squares)
        if task.index == 0:
            self.efm = (efm / count.sum()).float()

    def end_task(self, task: Task, progress_factory=None, check=None):
        if self.train_x is not None:
            with exact(self.train_x.device), torch.no_grad():
                self.efm = (efm_sum(self.train_x, self.model.head.weight) / len(self.train_x)).float()
            self.train_x = self.train_y = None
        return super().end_task(task, progress_factory, check)
