"""NCM: the nearest class mean on the features frozen after the base task (FeCAM's Euclidean
baseline, dipamgoswami/FeCAM ``models/base.py`` with ``"ncm": true``)."""

from __future__ import annotations

import torch

from .base import Method, Phase, Task, register
from .features import class_sums, exact, l2_normalize


@register
class NCM(Method):
    """Train the backbone on the base task (global CE, the lab's linear head), then freeze it.
    After each task one pass over its training images stores the class means
    ``mu_c = mean f(x)`` of the new classes; a test image goes to the nearest mean after L2
    normalisation of both, ``argmin_c ||f/||f|| - mu_c/||mu_c||||^2`` (FeCAM's Euclidean
    baseline; the ranking of the cosine similarity). No training after the base task. Its
    paper preset takes FeCAM's base-task schedule (``preset_source = "fecam"``)."""

    name, label, color, rank = "ncm", "NCM", "#999933", 50
    family, citation = "statistics", "Rebuffi et al., CVPR 2017 (nearest class mean); FeCAM's Euclidean baseline, NeurIPS 2023"
    faithful = "the backbone frozen after the base task; L2-normalised features and class means, as FeCAM's Euclidean baseline"
    classifier = "NCM (L2-normalised features)"
    preset_source = "fecam"

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.means = torch.zeros(0, model.feature_dim, device=model.device)  # (classes seen, d)

    def incremental_phases(self, task: Task) -> list[Phase]:
        return []  # the backbone is frozen after the base task

    def needs_statistics(self, task: Task) -> bool:
        return True

    def statistics(self, task: Task, batches, reduce) -> None:
        count, total, _, _ = class_sums(self.model, task.classes, batches, reduce)
        self.means = torch.cat([self.means[:task.n_old], (total / count[:, None]).float()])

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``-||f/||f|| - mu_c/||mu_c||||^2`` for every stored class: (B, classes seen)."""
        features = self.model.features(x)
        with exact(x.device):
            return -ncm_distances(features.float(), self.means)

    def state_dict(self) -> dict:
        return {"means": self.means}

    def load_state_dict(self, state: dict, task: Task) -> None:
        self.means = state["means"].to(self.model.device)


def ncm_distances(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between L2-normalised features (B, d) and L2-normalised
    class means (C, d): (B, C)."""
    f, m = l2_normalize(features), l2_normalize(means)
    return (f * f).sum(1, keepdim=True) - 2 * f @ m.T + (m * m).sum(1)[None]
