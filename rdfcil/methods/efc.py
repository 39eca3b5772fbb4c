"""EFC, Elastic Feature Consolidation (Magistri et al., ICLR 2024), as the authors' code runs it
(simomagi/elastic_feature_consolidation: ``continual_learning/ElasticFeatureConsolidation.py``,
``utils/empirical_feature_matrix.py``, ``utils/proto.py``, ``utils/buffer.py``,
``utils/OptimizerManager.py``).

The backbone keeps learning. Its feature drift is penalised along the directions that matter to
the classifier (the Empirical Feature Matrix), old classes are replayed as samples of per-class
Gaussians in feature space, and the Gaussians' means follow the drift measured on the current
task's images. The functions of this module are EFC++'s too (:mod:`rdfcil.methods.efcpp`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import losses as L
from ..data import host_to_device
from .base import Method, Phase, Task, register
from .features import class_covariances, exact

COVARIANCE_JITTER = 1e-5  # added to the diagonal of every class covariance before sampling (utils/proto.py)


# --------------------------------------------------------------------------- the Empirical Feature Matrix

def efm_sum(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_x sum_c p_c(x) J_c(x)^T J_c(x)`` over a batch, (d, d) float64, where
    ``p = softmax(W f)`` and ``J = (I - 1 p^T) W`` is the Jacobian of ``log softmax(W f)`` with
    respect to the features ``f`` (EFC, Eq. 6; the authors' closed form, ``compute_efm``). Since
    ``sum_c p_c = 1``, ``sum_c p_c J_c^T J_c = W^T diag(p) W - (W^T p)(W^T p)^T``.

    ``features`` (B, d), ``weight`` (C, d) the bias-free head's rows of every seen class. Divide
    the sum by the number of images for the matrix ``E``."""
    f, w = features.double(), weight.double()
    p = torch.softmax(f @ w.T, dim=1)  # (B, C)
    mean_row = p @ w  # (B, d): W^T p per image
    return w.T @ (p.sum(0)[:, None] * w) - mean_row.T @ mean_row


def efm_loss(features: torch.Tensor, old_features: torch.Tensor, efm: torch.Tensor, lamb: float,
             damping: float) -> torch.Tensor:
    """``L_EFM = mean_x (f_t - f_{t-1})^T (lambda E_{t-1} + eta I) (f_t - f_{t-1})`` (EFC, Eq. 9;
    ``efm_loss``): ``features`` (B, d) of the model in training, ``old_features`` (B, d) of the
    frozen previous model, ``efm`` (d, d) the previous task's matrix. A scalar, fp32."""
    delta = features.float() - old_features.float()
    matrix = lamb * efm.float() + damping * torch.eye(efm.shape[0], device=efm.device)
    return ((delta @ matrix) * delta).sum(1).mean()


# --------------------------------------------------------------------------- prototype drift

def drift_weights(old_features: torch.Tensor, means: torch.Tensor, efm: torch.Tensor, sigma: float) -> torch.Tensor:
    """EFC's weights of the current images in the drift of each old class mean (``compute_drift``):
    ``s_ci = -(f_{t-1}(x_i) - mu_c)^T E (f_{t-1}(x_i) - mu_c)``, min-max scaled over every
    ``(c, i)`` to [0, 1], then ``w_ci = exp(s_ci / (2 sigma^2)) / sum_j exp(s_cj / (2 sigma^2))``.

    ``old_features`` (N, d) of the current task's images under the previous model, ``means``
    (C_old, d), ``efm`` (d, d) the previous task's matrix. Returns (C_old, N) float64, each row
    summing to 1 (uniform rows where every distance is equal)."""
    diff = old_features.double()[None, :, :] - means.double()[:, None, :]  # (C, N, d)
    distance = -torch.einsum("cnd,de,cne->cn", diff, efm.double(), diff)
    low, high = distance.min(), distance.max()
    spread = high - low
    scaled = torch.where(spread > 0, (distance - low) / torch.where(spread > 0, spread, torch.ones_like(spread)),
                         torch.zeros_like(distance))
    return torch.softmax(scaled / (2 * sigma ** 2), dim=1)


def prototype_drift(new_features: torch.Tensor, old_features: torch.Tensor, means: torch.Tensor,
                    efm: torch.Tensor, sigma: float) -> torch.Tensor:
    """The displacement of each old class mean, ``sum_i w_ci (f_t(x_i) - f_{t-1}(x_i))``
    (:func:`drift_weights`), (C_old, d) float64."""
    weights = drift_weights(old_features, means, efm, sigma)
    return weights @ (new_features.double() - old_features.double())


# --------------------------------------------------------------------------- PR-ACE sampling

def prace_split(n_old: int, n_new: int, batch_size: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """How PR-ACE fills its second batch (``utils/buffer.py``, ``Buffer.sample``): ``batch_size``
    class indices drawn without replacement from ``0..n_old + n_new - 1`` (when there are fewer
    classes: all of them, shuffled, followed by the first ``batch_size - classes`` of that order
    again); the indices of old classes count Gaussian samples, the others images of the previous
    batch. Returns ``(prototypes, replayed images)``."""
    total = n_old + n_new
    order = torch.randperm(total, generator=generator)
    if total < batch_size:
        order = torch.cat([order, order[:batch_size - total]])
    else:
        order = order[:batch_size]
    n_proto = int((order < n_old).sum())
    return n_proto, len(order) - n_proto


def prototype_labels(n_old: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``size`` old-class labels as ``ProtoGenerator.perturbe`` draws them, in random order: every
    old class once in a random order, repeated until ``size`` (the first ``size`` when there are
    more classes). (size,) long, on the host."""
    order = torch.randperm(n_old, generator=generator)
    labels = order.repeat(math.ceil(size / n_old))[:size]
    return labels[torch.randperm(size, generator=generator)]


def gaussian_samples(means: torch.Tensor, factors: torch.Tensor, labels: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """Samples ``mu_y + L_y z`` of the class Gaussians ``N(mu_y, L_y L_y^T)``: ``means`` (C, d),
    ``factors`` (C, d, d) lower Cholesky factors of ``Sigma_c + 1e-5 I``, ``labels`` (n,),
    ``noise`` (n, d) standard normal. (n, d) in the means' dtype."""
    return means[labels] + (factors[labels] @ noise[:, :, None].to(factors.dtype)).squeeze(-1)


def rotated(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The self-rotation batch of EFC's base task (``compute_rotations``, after PASS): each image
    turned by 90, 180 and 270 degrees, labelled ``3 y + k + n - 1`` (k = 1, 2, 3) in the
    auxiliary outputs that follow the ``n`` class logits. (3B, C, H, W) and (3B,)."""
    turned = torch.stack([torch.rot90(x, k, (2, 3)) for k in (1, 2, 3)], 1).flatten(0, 1)
    labels = torch.stack([3 * y + k + n_classes - 1 for k in (1, 2, 3)], 1).flatten()
    return turned, labels


def non_batchnorm_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` outside its BatchNorm layers: EFC's ``freeze_bn`` keeps the
    BatchNorm affine parameters fixed in the incremental tasks as well as their statistics."""
    return [p for m in module.modules() if not isinstance(m, _BatchNorm) for p in m.parameters(recurse=False)]


# --------------------------------------------------------------------------- the method

@register
class EFC(Method):
    """EFC. Base task: CE over the base classes (with ``efc_self_rotation``, also over the three
    rotations of each image with an auxiliary head), Adam. Each later task, BatchNorm frozen, Adam
    on the backbone and every head row:
    ``L = CE(new head; x) + CE(all heads; [Gaussian samples of old classes, replayed images of the
    previous batch]) + mean (f_t - f_{t-1})^T (lambda E_{t-1} + eta I) (f_t - f_{t-1})`` (PR-ACE,
    :func:`prace_split` with ``efc_protobatch``; ``efc_lamb``, ``efc_damping``).

    After each task, one statistics pass: the old class means move by the EFM-weighted drift of
    the current images (``efc_protoupdate``, :func:`prototype_drift`, with ``E_{t-1}``); then
    ``E_t`` (:func:`efm_sum`) and the new classes' Gaussians (mean, covariance + 1e-5 I). Test
    images are classified by the linear head over every seen class."""

    name, label, color, rank = "efc", "EFC", "#994455", 70
    family, citation = "drift", "Magistri et al., ICLR 2024"
    faithful = ("EFM regulariser (lambda 10, eta 0.1), PR-ACE on Gaussian prototypes, EFM-weighted drift update "
                "(sigma 0.2), frozen BatchNorm and Adam as the authors' code; statistics on augmented images (`drift_augment`)")
    preset_source = "efc"
    keys = frozenset({"efc_lamb", "efc_damping", "efc_protoupdate", "efc_protobatch", "efc_self_rotation",
                      "drift_augment"})
    keeps_old_model = True
    classifier = "linear head"
    trains_old_heads = True  # EFC++: only the new head trains with the backbone

    @classmethod
    def vanishing_losses(cls, config, task_index: int, n_old: int, n_new: int) -> list[str]:
        """The base class's, and the new head's cross-entropy of an incremental task of one class."""
        lost = super().vanishing_losses(config, task_index, n_old, n_new)
        return lost + (["ce (the new head's cross-entropy over its one class)"] if task_index and n_new == 1 else [])

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        d, device = model.feature_dim, model.device
        self.means = torch.zeros(0, d, device=device)  # (classes seen, d)
        self.covariances = torch.zeros(0, d, d, device=device)
        self.factors = torch.zeros(0, d, d, device=device)  # Cholesky factors of covariance + 1e-5 I
        self.counts = torch.zeros(0, device=device)  # training images per class (EFC++'s samples per class)
        self.efm = torch.zeros(d, d, device=device)  # E of the last finished task
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None  # PR-ACE's buffer: the last batch
        self.shard = lambda t: t

    def set_shard(self, shard) -> None:
        """Under torchrun each process takes its share of the Gaussian samples (and of the
        previous batch's replayed images: its own shard of that batch)."""
        self.shard = shard

    # -- phases --------------------------------------------------------------------------------
    def phases(self, task: Task) -> list[Phase]:
        if task.index == 0:
            return [self.base_phase(task)]
        return self.incremental_phases(task)

    def base_phase(self, task: Task) -> Phase:
        """CE over the base classes, Adam; with ``efc_self_rotation`` the auxiliary head (``nn.Linear(d,
        3 n)``, with bias, trained and then dropped) adds the rotated images to each batch."""
        aux = nn.Linear(self.model.feature_dim, 3 * task.n_new, device=self.model.device) \
            if self.config.efc_self_rotation else None

        def loss(x, y):
            if aux is None:
                return {"ce": L.global_ce(self.model(x), y)}
            turned, turned_y = rotated(x, y, task.n_new)
            logits, features = self.model(torch.cat([x, turned]), features=True)
            return {"ce": L.global_ce(torch.cat([logits, aux(features)], 1), torch.cat([y, turned_y]))}
        phase = self.phase("base", task, loss, extra=(aux,) if aux is not None else ())
        phase.optimizer = "adam"
        return phase

    def incremental_parameters(self, task: Task) -> list[nn.Parameter]:
        """The backbone outside BatchNorm and every head row (``OptimizerManager``, approach efc)."""
        return non_batchnorm_parameters(self.model.backbone) + list(self.model.head.parameters())

    def incremental_phases(self, task: Task) -> list[Phase]:
        """One Adam phase at ``lr_incremental``, no schedule (the authors' fixed lr), model in eval
        mode (frozen BatchNorm), PR-ACE and the EFM penalty."""
        c = self.config
        self.previous = None

        def loss(x, y):
            b = len(x)
            with torch.no_grad():
                old_features = self.old_model.features(x)
            if self.previous is None:  # the task's first step: prototypes only
                n_proto, n_replay = c.efc_protobatch, 0
            else:
                n_proto, n_replay = prace_split(task.n_old, task.n_new, c.batch_size)
                # this process's shard of the previous batch's first n_replay images ([rank::world])
                n_replay = len(self.shard(torch.arange(n_replay)))
            inputs, targets = x, y
            if n_replay:
                inputs = torch.cat([x, self.previous[0][:n_replay]])
                targets = torch.cat([y, self.previous[1][:n_replay]])
            logits, features = self.model(inputs, features=True)
            protos, proto_labels = self.prototype_batch(task.n_old, c.efc_protobatch, n_proto)
            all_logits = torch.cat([self.model.head(protos), logits[b:]])
            self.previous = (x.detach(), y)
            return {"ce": L.local_ce(logits[:b], y, task.n_old),
                    "prace": L.global_ce(all_logits, torch.cat([proto_labels, targets[b:]])),
                    "efm": efm_loss(features[:b], old_features, self.efm, c.efc_lamb, c.efc_damping)}
        return [Phase("train", self.train_epochs(task), self.lr(task), self.incremental_parameters(task), loss,
                      task.classes, [], train_backbone=False, optimizer="adam")]

    def prototype_batch(self, n_old: int, size: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` labels drawn as :func:`prototype_labels`, the first ``keep`` kept, and a sample of
        each label's Gaussian; this process's share under torchrun. (keep, d), (keep,)."""
        labels = host_to_device(prototype_labels(n_old, size)[:keep], self.means.device)
        noise = torch.randn(keep, self.means.shape[1], device=self.means.device)
        labels, noise = self.shard(labels), self.shard(noise)
        return gaussian_samples(self.means, self.factors, labels, noise), labels

    # -- statistics ----------------------------------------------------------------------------
    def needs_statistics(self, task: Task) -> bool:
        return True

    def statistics(self, task: Task, batches, reduce) -> None:
        """The drift update of the old means (every image on every process: the min-max scaling of
        the weights spans them all), then from sums reduced over the processes the new classes'
        Gaussians and ``E_t``."""
        if task.index and self.config.efc_protoupdate is not None:
            self.update_means(task, *self.old_and_new_features(batches))
        count, total, squares, efm = self.class_sums(task, batches, reduce, with_efm=True)
        self.add_gaussians(count, total, squares)
        self.efm = (efm / count.sum()).float()

    def old_and_new_features(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every image of the task under the previous and the current model: (N, d), (N, d), (N,)."""
        old, new, labels = [], [], []
        for x, y in batches(shard=False, augment=self.config.drift_augment):
            old.append(self.old_model.features(x).float())
            new.append(self.model.features(x).float())
            labels.append(y)
        return torch.cat(old), torch.cat(new), torch.cat(labels)

    def update_means(self, task: Task, old_features, new_features, labels) -> None:
        with exact(old_features.device):
            shift = prototype_drift(new_features, old_features, self.means[:task.n_old], self.efm,
                                    self.config.efc_protoupdate)
        self.means = torch.cat([(self.means[:task.n_old].double() + shift).float(), self.means[task.n_old:]])

    def class_sums(self, task: Task, batches, reduce, with_efm: bool):
        """One pass over this process's shard: per new class the count, the sum of ``f`` and of
        ``f f^T``, and (``with_efm``) the EFM sum over every seen head row; float64, reduced."""
        n, d, device = task.n_new, self.model.feature_dim, self.model.device
        count = torch.zeros(n, dtype=torch.float64, device=device)
        total = torch.zeros(n, d, dtype=torch.float64, device=device)
        squares = torch.zeros(n, d, d, dtype=torch.float64, device=device)
        efm = torch.zeros(d, d, dtype=torch.float64, device=device)
        weight = self.model.head.weight
        for x, y in batches(augment=self.config.drift_augment):
            row = y - task.n_old
            f = self.model.features(x).double()
            count.index_add_(0, row, torch.ones_like(row, dtype=torch.float64))
            total.index_add_(0, row, f)
            squares.index_add_(0, row, f[:, :, None] * f[:, None, :])
            if with_efm:
                efm += efm_sum(f, weight)
        return reduce(count), reduce(total), reduce(squares), (reduce(efm) if with_efm else None)

    def add_gaussians(self, count, total, squares) -> None:
        """The new classes' means, unbiased covariances (``torch.cov``) and the Cholesky factors of
        ``Sigma + 1e-5 I`` their samples are drawn with."""
        d = total.shape[1]
        covariance = class_covariances(count, total, squares)
        jittered = covariance + COVARIANCE_JITTER * torch.eye(d, dtype=covariance.dtype, device=covariance.device)
        self.means = torch.cat([self.means, (total / count[:, None]).float()])
        self.covariances = torch.cat([self.covariances, covariance.float()])
        self.factors = torch.cat([self.factors, torch.linalg.cholesky(jittered).float()])
        self.counts = torch.cat([self.counts, count.float()])

    # -- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"means": self.means, "covariances": self.covariances, "factors": self.factors,
                "counts": self.counts, "efm": self.efm}

    def load_state_dict(self, state: dict, task: Task) -> None:
        super().load_state_dict(state, task)
        for key in ("means", "covariances", "factors", "counts", "efm"):
            setattr(self, key, state[key].to(self.model.device))
