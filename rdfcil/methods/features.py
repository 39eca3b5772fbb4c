"""Class statistics of frozen features, shared by the prototype methods (NCM, FeCAM, FeTrIL).

Everything is built from sums (counts, feature sums, sums of outer products) in float64, so
that the statistics pass under torchrun, where each process reads its shard and ``reduce``
sums over the processes, gives what one process gives.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterator

import torch
from torch import nn

EPSILON = 1e-8  # FeCAM's (and PyCIL's) guard in the L2 normalisation of features


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / (||x||_2 + 1e-8)`` along the last axis (FeCAM's ``_eval_maha``)."""
    return x / (x.norm(dim=-1, keepdim=True) + EPSILON)


def exact(device: torch.device):
    """A block in fp32 whatever the run's autocast (distances, covariances); the ``meta``
    device has no autocast to switch off."""
    device = torch.device(device)
    return nullcontext() if device.type == "meta" else torch.autocast(device.type, enabled=False)


def class_sums(model: nn.Module, classes: range, batches: Callable[..., Iterator], reduce: Callable,
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None, outer: bool = False):
    """Per class of ``classes`` (rows ``0..len(classes)-1``), summed over the processes:
    ``(count (n,), sum of f (n, d), sum of t(f) (n, d), sum of t(f) t(f)^T (n, d, d) or None)``
    in float64, ``f = model.features(x)``, ``t = transform`` (identity if None). One pass of
    ``batches()``; labels are remapped (``y - classes.start`` indexes the rows)."""
    n, d, device = len(classes), model.feature_dim, model.device
    count = torch.zeros(n, dtype=torch.float64, device=device)
    total = torch.zeros(n, d, dtype=torch.float64, device=device)
    total_t = torch.zeros(n, d, dtype=torch.float64, device=device) if transform is not None else None
    squares = torch.zeros(n, d, d, dtype=torch.float64, device=device) if outer else None
    for x, y in batches():
        row = y - classes.start
        f = model.features(x).double()
        count.index_add_(0, row, torch.ones_like(row, dtype=torch.float64))
        total.index_add_(0, row, f)
        g = f if transform is None else transform(f)
        if total_t is not None:
            total_t.index_add_(0, row, g)
        if squares is not None:
            squares.index_add_(0, row, g[:, :, None] * g[:, None, :])
    count, total = reduce(count), reduce(total)
    total_t = total if total_t is None else reduce(total_t)
    return count, total, total_t, (reduce(squares) if squares is not None else None)


def class_covariances(count: torch.Tensor, total: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    """Unbiased per-class covariances from sums (``np.cov`` of each class's rows):
    ``(S2 - s s^T / n) / (n - 1)``; (n, d, d) in the sums' dtype."""
    n = count[:, None, None]
    return (squares - total[:, :, None] * total[:, None, :] / n) / (n - 1)


def all_features(model: nn.Module, batches: Callable[..., Iterator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's features and label, ``(N, d)`` fp32 and ``(N,)``, the same on every
    process (``batches(shard=False)``)."""
    features, labels = [], []
    for x, y in batches(shard=False):
        features.append(model.features(x).float())
        labels.append(y)
    return torch.cat(features), torch.cat(labels)
