"""The training losses of R-DFCIL and its baselines, as pure functions (docs/methods/inversion.md).

Every function takes tensors and returns a scalar tensor; weights are applied by the method.
Relational and distillation terms are computed in fp32 whatever the autocast precision.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .precision import fp32, fp32_section


def rrl_weights(n_old: int, n_new: int) -> tuple[float, float]:
    """``alpha = log2(n_new / 2 + 1)``, ``beta = sqrt(n_old / n_new)`` (docs/methods/inversion.md, "R-DFCIL")."""
    return math.log2(n_new / 2 + 1), math.sqrt(n_old / n_new)


@fp32
def local_ce(logits: torch.Tensor, targets: torch.Tensor, n_old: int) -> torch.Tensor:
    """``L_lce = CE(z[:, n_old:], y - n_old)``: cross-entropy over the new classes only."""
    return F.cross_entropy(logits[:, n_old:].float(), targets - n_old)


@fp32
def global_ce(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``L_ce = CE(z, y)`` over all seen classes, optionally class-weighted
    (``sum_i w_{y_i} CE_i / sum_i w_{y_i}``, PyTorch's weighted mean)."""
    return F.cross_entropy(logits.float(), targets, weight=class_weights)


@fp32
def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(z, y)`` over the classes where the bool ``mask`` (C,) is True, the others left out
    (logits ``-inf``: no probability, no gradient); optionally class-weighted as
    :func:`global_ce`. Over a padded head's logits (B, C) with ``mask`` its seen classes it is
    :func:`global_ce` of the seen logits; with the new classes' mask it is :func:`local_ce`
    (``CE(z[:, n_old:], y - n_old)``), in shapes that do not change from task to task."""
    return F.cross_entropy(logits.float().masked_fill(~mask, float("-inf")), targets, weight=class_weights)


@fp32
def masked_hkd(logits: torch.Tensor, old_logits: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """:func:`hkd` on the old classes of padded logits: ``sum_{i, c in old} |z_ic - z_old_ic| /
    (B n_old)``, ``old`` the bool mask (C,) of the old model's classes, ``n_old = sum(old)``
    (a device tensor: no shape depends on it)."""
    difference = (logits.float() - old_logits.float()).abs() * old
    return difference.sum() / (len(logits) * old.sum())


@fp32
def hkd(logits_old_classes: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """Hard knowledge distillation: ``L_hkd = mean |z[:, :n_old] - z_old|`` (L1)."""
    return F.l1_loss(logits_old_classes.float(), old_logits.float())


@fp32
def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-mean_i sum_c q_ic log softmax(z_i / T)_c``: the ABD repository's ``loss_fn_kd`` (no T^2
    factor); ``q`` are given probabilities (rows may hold zeros)."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    return -(target_probs.float() * log_p).sum(dim=1).mean()


@fp32
def kd(logits_old_classes: torch.Tensor, old_logits: torch.Tensor, temperature: float,
       t2: bool = False) -> torch.Tensor:
    """Soft distillation of LwF as the ABD repository computes it:
    ``L_kd = -mean_i sum_c softmax(z_old / T)_c log softmax(z / T)_c`` (the KL divergence plus the
    targets' entropy, a constant without gradient), times ``T^2`` only if ``t2`` (Hinton et al.'s
    factor; the ABD code has none)."""
    q = F.softmax(old_logits.float() / temperature, dim=1)
    loss = soft_cross_entropy(logits_old_classes, q, temperature)
    return loss * temperature ** 2 if t2 else loss


@fp32
def kd_seen(logits_seen: torch.Tensor, old_logits: torch.Tensor, temperature: float,
            t2: bool = False) -> torch.Tensor:
    """DeepInversion's distillation on synthetic data (ABD repository): soft cross-entropy over
    every seen class against ``q = [softmax(z_old / T), 0, ..., 0]``, the new classes' targets
    set to zero: ``-mean_i sum_{c < n_old} q_ic log softmax(z_i / T)_c`` over all seen logits."""
    q = F.softmax(old_logits.float() / temperature, dim=1)
    q = F.pad(q, (0, logits_seen.shape[1] - q.shape[1]))
    loss = soft_cross_entropy(logits_seen, q, temperature)
    return loss * temperature ** 2 if t2 else loss


@fp32
def sample_weighted_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_i w_i CE(z_i, y_i)``: per-sample weights, averaged over the batch (not normalised
    by the weights' sum): the ABD repository's ``criterion``."""
    return (F.cross_entropy(logits.float(), targets, reduction="none") * weights.float()).mean()


def abd_sample_weights(targets: torch.Tensor, n_old: int, n_seen: int) -> torch.Tensor:
    """ABD's class balancing: ``n_old / n_seen`` for samples with an old label (``y < n_old``),
    ``n_new / n_seen = 1 - n_old / n_seen`` for a new one."""
    ratio = n_old / n_seen
    return torch.where(targets < n_old, ratio, 1.0 - ratio).float()


@fp32
def angle_relations(e: torch.Tensor) -> torch.Tensor:
    """The N x N x N angle tensor ``psi[i, j, k] = <u_ij, u_ik>``, ``u_ij = normalize(e_j - e_i)``."""
    e = e.float()
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # u[i, j] = e_j - e_i, unit
    return torch.bmm(u, u.transpose(1, 2))


@fp32
def distance_relations(e: torch.Tensor) -> torch.Tensor:
    """Pairwise distances normalised by their mean over distinct pairs: ``d_ij / mean(d)``."""
    d = torch.cdist(e.float(), e.float())
    off_diagonal = 1 - torch.eye(len(e), device=e.device)  # a product, not a boolean index: static shape, no sync
    return d / ((d * off_diagonal).sum() / off_diagonal.sum()).clamp_min(1e-12)


@fp32
def rkd_angle(projected: torch.Tensor, projected_old: torch.Tensor) -> torch.Tensor:
    """``L_rkd = mean |psi(P1 f) - psi(P2 f_old)|`` over the N^3 angles (docs/methods/inversion.md, "R-DFCIL")."""
    return F.l1_loss(angle_relations(projected), angle_relations(projected_old))


@fp32
def rkd_distance(projected: torch.Tensor, projected_old: torch.Tensor) -> torch.Tensor:
    """Distance variant (ablation): ``mean |d(P1 f) - d(P2 f_old)|`` of normalised distances."""
    return F.l1_loss(distance_relations(projected), distance_relations(projected_old))


class RelationProjections(nn.Module):
    """The two learnable linear projections of RKD, ``P1`` (current features) and ``P2`` (old
    features), each ``feature_dim -> 2 * feature_dim``, trained with the model."""

    def __init__(self, feature_dim: int, device=None):
        super().__init__()
        self.current = nn.Linear(feature_dim, 2 * feature_dim, device=device)
        self.old = nn.Linear(feature_dim, 2 * feature_dim, device=device)

    def forward(self, features: torch.Tensor, old_features: torch.Tensor):
        with fp32_section(features.device):
            return self.current(features.float()), self.old(old_features.float())


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """``w_c = sum(counts) / max(count_c, 1)``, normalised so that the smallest weight is 1."""
    counts = counts.float()
    weights = counts.sum() / counts.clamp_min(1.0)
    return weights / weights.min()


@fp32
def feature_distillation(current_features: torch.Tensor, old_features: torch.Tensor,
                         old_head_weight: torch.Tensor) -> torch.Tensor:
    """ABD's importance-weighted feature distillation through the frozen old linear head:
    ``mean_i || W_old f_i - W_old f_old_i ||^2 / n_old``."""
    diff = (current_features.float() - old_features.float()) @ old_head_weight.float().t()
    return (diff ** 2).sum(dim=1).mean() / old_head_weight.shape[0]
