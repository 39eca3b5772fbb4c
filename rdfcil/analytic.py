"""Analytic learning: a fixed random expansion of frozen features and linear heads solved in closed
form, ACIL (Zhuang et al., NeurIPS 2022) and DS-AL (Zhuang et al., AAAI 2024).

The expansion ("buffer" in the authors' code) is ``X = f W_B^T``, ``W_B`` of shape
(size, feature_dim) drawn once, uniform in ``(-1/sqrt(feature_dim), 1/sqrt(feature_dim))`` (the
initialisation of a bias-free ``nn.Linear``), in float64.

The authors' code learns each batch ``(X, Y)`` by recursive least squares (ACIL, equations 9-10),
starting from ``R_0 = I / gamma``, ``W_0 = 0``::

    R <- R - R X^T (I + X R X^T)^{-1} X R
    W <- W + R X^T (Y - X W)

By the Woodbury identity, after any sequence of batches ``R = (gamma I + sum X^T X)^{-1}`` and
``W = R sum X^T Y``: the ridge regression on every row seen, whatever the number of tasks or
batches ("absolute memorisation"). :class:`RidgeStream` keeps the two sums
``A = gamma I + sum X^T X`` (which is ``R^{-1}``) and ``B = sum X^T Y`` instead of ``R`` and ``W``:
sums add across processes under ``torchrun``, which ``R`` does not. ``W = A^{-1} B`` is solved by
a Cholesky factorisation (``A`` is symmetric positive definite for ``gamma > 0``).

Memory, float64, expansion size ``b``: ``A`` is ``b^2 * 8`` bytes (512 MiB at the authors' CIFAR
size 8192); fitting a chunk adds one ``b x b`` product, solving one ``b x b`` factor.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Reduce = Callable[[torch.Tensor], torch.Tensor]
DTYPE = torch.float64


def identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class RandomExpansion(nn.Module):
    """The fixed random projection ``X = f W_B^T`` (no activation: the streams apply theirs).

    ``weight``: (size, feature_dim) float64 on ``device``, drawn from a generator on that device
    seeded with ``seed`` (every process of a run draws the same matrix); on ``meta`` it is left
    empty. Input ``f`` (N, feature_dim), any float dtype; output (N, size) float64."""

    def __init__(self, feature_dim: int, size: int, seed: int, device=None):
        super().__init__()
        device = torch.device(device or "cpu")
        weight = torch.empty(size, feature_dim, dtype=DTYPE, device=device)
        if device.type != "meta":
            bound = 1.0 / math.sqrt(feature_dim)
            generator = torch.Generator(device=device).manual_seed(seed)
            weight.uniform_(-bound, bound, generator=generator)
        self.register_buffer("weight", weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(DTYPE) @ self.weight.T


class RidgeStream(nn.Module):
    """One linear head solved as ridge regression from sums, float64 on ``device``.

    Buffers: ``autocorrelation`` A = gamma I + sum X^T X (size, size), ``crosscorrelation``
    B = sum X^T Y (size, classes) and ``weight`` W = A^{-1} B (size, classes); the class columns
    grow with :meth:`grow` (new columns of B are zero: earlier rows had target 0 there, as the
    authors' zero-padded targets). ``forward``: (N, size) -> (N, classes)."""

    def __init__(self, size: int, gamma: float, device=None):
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        device = torch.device(device or "cpu")
        self.gamma = gamma
        autocorrelation = torch.zeros(size, size, dtype=DTYPE, device=device)
        autocorrelation.diagonal().fill_(gamma)  # gamma I (torch.eye is slow to build on meta)
        self.register_buffer("autocorrelation", autocorrelation)
        self.register_buffer("crosscorrelation", torch.zeros(size, 0, dtype=DTYPE, device=device))
        self.register_buffer("weight", torch.zeros(size, 0, dtype=DTYPE, device=device))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[1]

    def grow(self, num_classes: int) -> None:
        """Zero columns up to ``num_classes`` in B and W."""
        extra = num_classes - self.num_classes
        if extra > 0:
            self.crosscorrelation = F.pad(self.crosscorrelation, (0, extra))
            self.weight = F.pad(self.weight, (0, extra))

    def add(self, x: torch.Tensor, y: torch.Tensor, reduce: Reduce = identity) -> None:
        """A += reduce(X^T X), B += reduce(X^T Y); ``x`` (N, size), ``y`` (N, classes) float64,
        ``reduce`` sums over processes (each process adds its own rows)."""
        self.grow(y.shape[1])
        self.autocorrelation += reduce(x.T @ x)
        self.crosscorrelation += reduce(x.T @ y)

    def solve(self) -> None:
        """W = A^{-1} B (Cholesky)."""
        factor = torch.linalg.cholesky(self.autocorrelation)
        self.weight = torch.cholesky_solve(self.crosscorrelation, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class AnalyticClassifier(nn.Module):
    """ACIL's head: ``scores = ReLU(f W_B^T) W``, W the ridge regression of one-hot labels on
    every expanded feature seen (gamma ``gamma``; the authors' CIFAR values: size 8192, gamma
    0.1). :meth:`fit` learns one chunk of rows (one IL batch of the authors' code), :meth:`finish`
    solves the head once a task's chunks are in."""

    def __init__(self, feature_dim: int, size: int, gamma: float, seed: int, device=None):
        super().__init__()
        self.expansion = RandomExpansion(feature_dim, size, seed, device)
        self.main = RidgeStream(size, gamma, device)

    @property
    def num_classes(self) -> int:
        return self.main.num_classes

    def fit(self, features: torch.Tensor, labels: torch.Tensor, task_classes: range,
            reduce: Reduce = identity) -> None:
        """Add a chunk: ``features`` (N, feature_dim), ``labels`` (N,) in ``range(task_classes.stop)``."""
        x = torch.relu(self.expansion(features))
        self.main.add(x, F.one_hot(labels, task_classes.stop).to(DTYPE), reduce)

    def finish(self) -> None:
        self.main.solve()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.main(torch.relu(self.expansion(features)))


class DualStreamClassifier(AnalyticClassifier):
    """DS-AL's head: the main stream (ACIL on ``ReLU(X)``) plus ``compensation`` (C, 0.6 on
    CIFAR) times a compensation stream, ridge regression (``gamma_comp``) on ``tanh(X)`` of the
    main stream's residual ``Y - ReLU(X) W_main`` with the columns of the previous classes set to
    zero (previous-label cleansing), DS-AL equations as the authors' ``DSAL.fit`` runs them.

    The residual of a chunk is taken against the main stream solved on every chunk up to and
    including it (the authors' code solves the main stream before each batch's residual), so the
    result depends on the chunking; one chunk per task is the paper's per-phase equation."""

    def __init__(self, feature_dim: int, size: int, gamma: float, seed: int, gamma_comp: float,
                 compensation: float, device=None):
        super().__init__(feature_dim, size, gamma, seed, device)
        self.compensation = compensation
        self.comp = RidgeStream(size, gamma_comp, device)

    def fit(self, features: torch.Tensor, labels: torch.Tensor, task_classes: range,
            reduce: Reduce = identity) -> None:
        x = self.expansion(features)
        x_main = torch.relu(x)
        y = F.one_hot(labels, task_classes.stop).to(DTYPE)
        self.main.add(x_main, y, reduce)
        self.main.solve()
        residual = y - self.main(x_main)
        residual[:, :task_classes.start] = 0  # previous-label cleansing
        self.comp.add(torch.tanh(x), residual, reduce)

    def finish(self) -> None:
        self.comp.solve()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.expansion(features)
        return self.main(torch.relu(x)) + self.compensation * self.comp(torch.tanh(x))


def load_buffers(module: nn.Module, state: dict) -> None:
    """``module.load_state_dict(state)`` for buffers whose shapes grow with the classes: each
    buffer is replaced by the stored tensor, moved to the device of the buffer it replaces."""
    for name, tensor in state.items():
        owner, _, leaf = name.rpartition(".")
        target = module.get_submodule(owner)
        target.register_buffer(leaf, tensor.to(getattr(target, leaf).device))


def chunks(batches, per_chunk: int):
    """Concatenate every ``per_chunk`` consecutive ``(features, labels)`` batches into one chunk
    (the last chunk takes what is left). Counting batches, not rows, makes every process under
    ``torchrun`` (the same number of batches, each process its shard) close the same chunks, the
    chunks of one process holding all the rows."""
    features, labels = [], []
    for f, y in batches:
        features.append(f)
        labels.append(y)
        if len(features) == per_chunk:
            yield torch.cat(features), torch.cat(labels)
            features, labels = [], []
    if features:
        yield torch.cat(features), torch.cat(labels)


def recursive_update(R: torch.Tensor, W: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """The authors' update of one batch (ACIL equations 9-10), for comparison:
    ``R <- R - R X^T (I + X R X^T)^{-1} X R``, ``W <- W + R X^T (Y - X W)``; returns ``(R, W)``."""
    K = torch.linalg.inv(torch.eye(len(x), dtype=x.dtype, device=x.device) + x @ R @ x.T)
    R = R - R @ x.T @ K @ x @ R
    return R, W + R @ x.T @ (y - x @ W)


def bench_update(size: int, batch: int = 4096, classes: int = 100, feature_dim: int = 64,
                 recursive: bool = False, device="cpu", seed: int = 0) -> dict:
    """Time of one ACIL update on a stand-in (``batch`` random features of ``feature_dim``,
    random labels of ``classes``) at expansion ``size``, synchronised on CUDA: the expansion, the
    sums of one chunk and the Cholesky solve of :class:`AnalyticClassifier`; with
    ``recursive=True`` the expansion and the authors' recursive step (:func:`recursive_update`
    from ``R = I / gamma``). Returns ``{"seconds": wall, "cpu_seconds": this process's CPU time}``
    (CPU time is robust to other processes sharing the cores); peak memory is the caller's to
    measure (e.g. ``/usr/bin/time -v``)."""
    import time
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    features = torch.randn(batch, feature_dim, generator=generator, device=device)
    labels = torch.randint(0, classes, (batch,), generator=generator, device=device)
    if recursive:
        expansion = RandomExpansion(feature_dim, size, seed, device)
        R = torch.eye(size, dtype=DTYPE, device=device) / 0.1
        W = torch.zeros(size, classes, dtype=DTYPE, device=device)
    else:
        head = AnalyticClassifier(feature_dim, size, 0.1, seed, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started, cpu = time.perf_counter(), time.process_time()
    if recursive:
        x = torch.relu(expansion(features))
        R, W = recursive_update(R, W, x, F.one_hot(labels, classes).to(DTYPE))
    else:
        head.fit(features, labels, range(0, classes))
        head.finish()
    sync()
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}
