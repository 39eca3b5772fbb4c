"""FeCAM (Goswami et al., NeurIPS 2023): a Mahalanobis distance to each class's prototype with
that class's covariance, on the features frozen after the base task, as the authors' code runs
it (dipamgoswami/FeCAM ``models/fecam.py``, ``models/base.py``, ``utils/maha_utils.py``)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import RdfcilError
from .base import Method, Phase, Task, register
from .features import class_covariances, class_sums, exact, l2_normalize


def tukey(x: torch.Tensor, beta: float, kind: str) -> torch.Tensor:
    """Tukey's ladder of powers: ``x^beta`` (``power``, the authors'; NaN below zero, so the
    caller guarantees ``x >= 0``), ``sign(x) |x|^beta`` (``signed``: the same on ``x >= 0``,
    and defined on the negative features of a ResNet without a ReLU after its residual
    additions) or ``x`` (``none``)."""
    if kind == "none":
        return x
    if kind == "power":
        return x.pow(beta)
    return x.sign() * x.abs().pow(beta)


def shrink(cov: torch.Tensor, alpha1: float, alpha2: float) -> torch.Tensor:
    """FeCAM's covariance shrinkage of each (d, d) matrix of ``cov`` (..., d, d):
    ``Sigma + alpha1 mean(diag) I + alpha2 mean(offdiag) (1 - I)``, where mean(offdiag) is
    the mean of the non-zero off-diagonal entries (``shrink_cov``)."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    diag_mean = cov.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    off = cov * (1 - eye)
    off_mean = (off.sum((-2, -1)) / (off != 0).sum((-2, -1)).clamp(min=1))[..., None, None]
    return cov + alpha1 * diag_mean * eye + alpha2 * off_mean * (1 - eye)


def correlation(cov: torch.Tensor) -> torch.Tensor:
    """``Sigma_ij / (sigma_i sigma_j)`` (FeCAM's ``normalize_cov``)."""
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    return cov / (sd[..., :, None] * sd[..., None, :])


def fecam_precisions(count, total_t, squares_t, alpha1: float, alpha2: float, twice: bool) -> torch.Tensor:
    """The inverse matrices of FeCAM's distance, one per class, from the sums of the transformed
    features: unbiased covariance, shrunk (twice with ``twice``, as ``compute_new_cov`` then
    ``_train`` do), normalised to a correlation, pseudo-inverted in float64; (C, d, d) fp32."""
    cov = shrink(class_covariances(count, total_t, squares_t), alpha1, alpha2)
    if twice:
        cov = shrink(cov, alpha1, alpha2)
    return torch.linalg.pinv(correlation(cov)).float()


def mahalanobis(vectors: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor) -> torch.Tensor:
    """``(x_hat - mu_hat)^T P_c (x_hat - mu_hat)`` for every row of ``vectors`` (B, d) and every
    class c of ``means`` (C, d), ``precisions`` (C, d, d); hats are L2-normalised
    (``F.normalize``, FeCAM's ``_mahalanobis``). Returns (B, C)."""
    diff = F.normalize(vectors, dim=-1)[:, None, :] - F.normalize(means, dim=-1)[None]
    return torch.einsum("bcd,cde,bce->bc", diff, precisions, diff)


@register
class FeCAM(Method):
    """Train the backbone on the base task (global CE), then freeze it. After each task, one
    pass over its training images gives per new class ``c``: the mean ``mu_c`` of the features
    and the covariance ``Sigma_c`` of their Tukey transform ``t(f)``, shrunk
    (``fecam_alpha1``, ``fecam_alpha2``) twice as in the authors' code (``fecam_shrink_twice``),
    normalised to a correlation and pseudo-inverted. A test feature ``f`` is L2-normalised,
    transformed, and goes to ``argmin_c (x_hat - mu_hat_c)^T pinv(Sigma_c) (x_hat - mu_hat_c)``
    with ``x_hat = t(f/||f||)/||.||``, ``mu_hat_c = t(mu_c)/||.||``. After the base task alone
    the authors score by the normalised distance to their classifier's weight rows, without
    Tukey; so does this class with the lab's head rows.

    ``fecam_tukey`` chooses the transform: the authors' ``x^0.5`` is NaN on negative features,
    which the published ResNet has (no ReLU after its residual additions); ``signed`` (the
    presets) is ``sign(x)|x|^0.5``, equal to it where it is defined; ``power`` is refused on
    the published ResNet and on any negative training feature."""

    name, label, color, rank = "fecam", "FeCAM", "#AA3377", 60
    family, citation = "statistics", "Goswami et al., NeurIPS 2023"
    faithful = "the authors' code: per-class covariances shrunk twice (`fecam_shrink_twice`), correlation-normalised, pseudo-inverse Mahalanobis on L2-normalised Tukey features; Tukey made sign-safe (`fecam_tukey`)"
    classifier = "FeCAM (Mahalanobis)"
    preset_source = "fecam"
    keys = frozenset({"fecam_tukey", "fecam_beta", "fecam_alpha1", "fecam_alpha2", "fecam_shrink_twice"})

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        d, device = model.feature_dim, model.device
        self.means = torch.zeros(0, d, device=device)  # (classes seen, d): raw feature means
        self.precisions = torch.zeros(0, d, d, device=device)  # (classes seen, d, d)
        self.task_index = 0

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return tukey(x, self.config.fecam_beta, self.config.fecam_tukey)

    def incremental_phases(self, task: Task) -> list[Phase]:
        return []  # the backbone is frozen after the base task

    def needs_statistics(self, task: Task) -> bool:
        return True

    def statistics(self, task: Task, batches, reduce) -> None:
        c = self.config
        count, total, total_t, squares_t = class_sums(self.model, task.classes, batches, reduce,
                                                      self.checked_transform, outer=True)
        if count.device.type != "meta" and bool((count < 2).any()):
            raise RdfcilError(f"FeCAM needs at least 2 training images per class for a covariance; task "
                              f"{task.index} has a class with {int(count.min())}")
        precisions = fecam_precisions(count, total_t, squares_t, c.fecam_alpha1, c.fecam_alpha2,
                                      c.fecam_shrink_twice)
        self.means = torch.cat([self.means[:task.n_old], (total / count[:, None]).float()])
        self.precisions = torch.cat([self.precisions[:task.n_old], precisions])
        self.task_index = task.index

    def checked_transform(self, f: torch.Tensor) -> torch.Tensor:
        if self.config.fecam_tukey == "power" and f.device.type != "meta" and bool((f < 0).any()):
            raise RdfcilError("fecam_tukey power (x^beta) met a negative feature; use fecam_tukey signed")
        return self.transform(f)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Minus FeCAM's distance to every stored class: (B, classes seen)."""
        features = self.model.features(x)
        with exact(x.device):
            vectors = l2_normalize(features.float())
            if self.task_index == 0:  # the authors' task 0: the classifier's rows, identity covariance
                rows = self.model.head.weight[:len(self.means)].float()
                return -(F.normalize(vectors, dim=-1)[:, None] - F.normalize(rows, dim=-1)[None]).pow(2).sum(-1)
            return -mahalanobis(self.transform(vectors), self.transform(self.means), self.precisions)

    def state_dict(self) -> dict:
        return {"means": self.means, "precisions": self.precisions, "task_index": torch.tensor(self.task_index)}

    def load_state_dict(self, state: dict, task: Task) -> None:
        self.means = state["means"].to(self.model.device)
        self.precisions = state["precisions"].to(self.model.device)
        self.task_index = int(state["task_index"])
