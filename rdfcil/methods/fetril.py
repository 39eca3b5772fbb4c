"""FeTrIL (Petit et al., WACV 2023): pseudo-features of the old classes translated from the
nearest new class, and a linear classifier retrained at each task on the frozen features, as
the authors' code runs it (GregoirePetit/FeTrIL ``codes/compute_distances.py``,
``codes/train_classifiers.py``, ``codes/compute_predictions.py``), or with PyCIL's fully
connected head (``models/fetril.py``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import losses as L
from ..data import host_to_device
from .base import Method, Phase, Task, register
from .features import all_features, exact


def nearest_new_class(old_means: torch.Tensor, new_means: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """For each old class, the index (into ``new_means``) of the new class whose mean is
    nearest: ``argmin ||mu_c - mu_c'||_2`` (the authors' ``pairwise_distances``) or, with
    ``cosine``, ``argmax cos(mu_c, mu_c')`` (PyCIL's ``_compute_relations``). (n_old,) long."""
    if metric == "cosine":
        return (F.normalize(old_means, dim=1) @ F.normalize(new_means, dim=1).T).argmax(1)
    return torch.cdist(old_means.double(), new_means.double()).argmin(1)


def pseudo_features(features: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, n_old: int,
                    metric: str = "euclidean") -> tuple[torch.Tensor, torch.Tensor]:
    """FeTrIL's pseudo-features of the old classes ``0..n_old-1``: for each old class ``c``,
    every real feature ``f`` of the nearest new class ``c*`` translated to
    ``f - mu_{c*} + mu_c``. ``features`` (N, d) and ``labels`` (N,) are the new classes' real
    features; ``means`` (n_old + n_new, d) every class mean. Returns (M, d) and (M,) in old-class
    order."""
    nearest = nearest_new_class(means[:n_old], means[n_old:], metric) + n_old
    out, out_labels = [], []
    for c in range(n_old):
        source = features[labels == nearest[c]]
        out.append(source - means[nearest[c]] + means[c])
        out_labels.append(torch.full((len(source),), c, dtype=labels.dtype, device=labels.device))
    return torch.cat(out), torch.cat(out_labels)


def fit_linear_svm(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, tol: float):
    """The authors' classifiers: one-vs-rest ``LinearSVC(penalty='l2', loss='squared_hinge',
    dual=False, C=c, tol=tol, fit_intercept=True)`` on ``x`` (N, d) with labels ``0..num_classes-1``,
    fitted on the host in float64. Returns numpy ``(weights (num_classes, d), biases (num_classes,))``."""
    from sklearn.svm import LinearSVC
    svm = LinearSVC(penalty="l2", loss="squared_hinge", dual=False, tol=tol, C=c, multi_class="ovr",
                    fit_intercept=True, intercept_scaling=1)
    svm.fit(x.detach().double().cpu().numpy(), y.cpu().numpy())
    coef, intercept = svm.coef_, svm.intercept_
    if len(svm.classes_) == 2:  # scikit-learn keeps one row for two classes: class 1 against class 0
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    weights = np.zeros((num_classes, x.shape[1]))
    biases = np.zeros(num_classes)
    weights[svm.classes_], biases[svm.classes_] = coef, intercept
    return weights, biases


@register
class FeTrIL(Method):
    """Train the backbone on the base task (global CE), then freeze it; store only class means.
    After each task, one pass over its training images gives the new classes' features and
    means; each old class ``c`` gets pseudo-features ``f - mu_{c*} + mu_c`` from the real
    features ``f`` of its nearest new class ``c*`` (``fetril_nearest``), and a linear
    classifier is retrained on real + pseudo-features (``fetril_classifier``):

    - ``svm`` (the authors'): one-vs-rest LinearSVC (``fetril_svm_c``, ``fetril_svm_tol``) on
      L2-normalised features, fitted at every task, the base task included; a test feature is
      L2-normalised and scored ``w_c . f + b_c``;
    - ``fc`` (PyCIL's): after the base task (scored by the model's head) a linear head with
      bias on the raw features, its old rows carried over, trained by SGD for
      ``fetril_fc_epochs`` at ``fetril_fc_lr`` (a head-only phase on the features)."""

    name, label, color, rank = "fetril", "FeTrIL", "#882255", 55
    family, citation = "statistics", "Petit et al., WACV 2023"
    faithful = "pseudo-features translated from the nearest new class (`fetril_nearest`), the authors' LinearSVC retrained at each task (`fetril_classifier`; fc is PyCIL's head)"
    preset_source = "fetril"
    keys = frozenset({"fetril_classifier", "fetril_nearest", "fetril_svm_c", "fetril_svm_tol", "fetril_fc_epochs",
                      "fetril_fc_lr", "fetril_fc_weight_decay"})
    classifier = "linear SVM or fc head on frozen features (fetril_classifier)"

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        d, device = model.feature_dim, model.device
        self.classifier = "LinearSVC (FeTrIL)" if config.fetril_classifier == "svm" else "fc head on features (FeTrIL)"
        self.means = torch.zeros(0, d, device=device)  # (classes seen, d)
        self.weight = torch.zeros(0, d, device=device)  # the SVMs' or the fc head's rows
        self.bias = torch.zeros(0, device=device)
        self.fc: nn.Linear | None = None
        self.task_index = 0
        self.train_x = self.train_y = None  # real + pseudo-features of the task (not saved)

    # -- phases --------------------------------------------------------------------------------
    def incremental_phases(self, task: Task) -> list[Phase]:
        if self.config.fetril_classifier == "svm":
            return []  # the backbone is frozen; the SVMs are fitted in the statistics pass
        c = self.config
        self.fc = self.grown_head(task)

        def loss(x, y):
            return {"ce": L.global_ce(self.fc(x), y)}
        return [Phase("head", c.fetril_fc_epochs, c.fetril_fc_lr, list(self.fc.parameters()), loss, task.seen,
                      [], train_backbone=False, modules=[self.fc], batches=self.feature_batches,
                      num_batches=lambda: -(-len(self.train_y) // c.batch_size), weight_decay=c.fetril_fc_weight_decay)]

    def grown_head(self, task: Task) -> nn.Linear:
        """PyCIL's ``update_fc``: a new linear with bias for every seen class, the old rows (and
        biases) copied, the new rows Kaiming-uniform and the new biases zero. After the base
        task the old rows are the model's head (no bias)."""
        device, d = self.model.device, self.model.feature_dim
        fc = nn.Linear(d, task.classes.stop, device=device)
        nn.init.kaiming_uniform_(fc.weight, nonlinearity="linear")
        nn.init.zeros_(fc.bias)
        with torch.no_grad():
            fc.weight[:task.n_old] = self.weight[:task.n_old] if len(self.weight) else self.model.head.weight[:task.n_old]
            fc.bias[:task.n_old] = self.bias[:task.n_old] if len(self.bias) else 0.0
        return fc

    def feature_batches(self, generator: torch.Generator):
        """Real + pseudo-features, shuffled by ``generator``, ``batch_size`` per batch (PyCIL's
        DataLoader: the last batch may be smaller)."""
        order = host_to_device(torch.randperm(len(self.train_y), generator=generator), self.train_y.device)
        for start in range(0, len(order), self.config.batch_size):
            chosen = order[start:start + self.config.batch_size]
            yield self.train_x[chosen], self.train_y[chosen]

    # -- statistics ----------------------------------------------------------------------------
    def needs_statistics(self, task: Task) -> bool:
        return True

    def statistics(self, task: Task, batches, reduce) -> None:
        """Every process reads every image of the task (``shard=False``): the SVM and the fc head
        need the whole feature set, identical on every process."""
        c = self.config
        features, labels = all_features(self.model, batches)
        rows = labels - task.n_old
        count = torch.zeros(task.n_new, dtype=torch.float64, device=features.device).index_add_(
            0, rows, torch.ones_like(rows, dtype=torch.float64))
        sums = torch.zeros(task.n_new, features.shape[1], dtype=torch.float64, device=features.device).index_add_(
            0, rows, features.double())
        self.means = torch.cat([self.means[:task.n_old], (sums / count[:, None]).float()])
        self.task_index = task.index
        if task.index:
            pseudo, pseudo_labels = pseudo_features(features, labels, self.means, task.n_old, c.fetril_nearest)
            features, labels = torch.cat([features, pseudo]), torch.cat([labels, pseudo_labels])
        self.train_x, self.train_y = features, labels
        if c.fetril_classifier == "svm":
            weights, biases = fit_linear_svm(F.normalize(features, dim=1), labels, task.classes.stop,
                                             c.fetril_svm_c, c.fetril_svm_tol)
            self.weight = torch.as_tensor(weights, dtype=torch.float32, device=self.model.device)
            self.bias = torch.as_tensor(biases, dtype=torch.float32, device=self.model.device)

    def end_task(self, task: Task, progress_factory=None, check=None):
        if self.fc is not None and task.index:  # keep the trained rows for the next task
            self.weight, self.bias = self.fc.weight.detach().clone(), self.fc.bias.detach().clone()
        self.train_x = self.train_y = None
        return super().end_task(task, progress_factory, check)

    # -- scoring -------------------------------------------------------------------------------
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """LinearSVC: ``w_c . f/||f|| + b_c``; fc: the model's logits after the base task, then
        ``W f + b`` on the raw features."""
        if self.config.fetril_classifier == "fc" and self.task_index == 0:
            return self.model(x)
        features = self.model.features(x)
        with exact(x.device):
            f = features.float()
            if self.config.fetril_classifier == "svm":
                f = F.normalize(f, dim=1)
            return f @ self.weight.T + self.bias

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"fc": self.fc} if self.fc is not None else {}

    def state_dict(self) -> dict:
        return {"means": self.means, "weight": self.weight, "bias": self.bias,
                "task_index": torch.tensor(self.task_index)}

    def load_state_dict(self, state: dict, task: Task) -> None:
        device = self.model.device
        self.means, self.weight, self.bias = (state[k].to(device) for k in ("means", "weight", "bias"))
        self.task_index = int(state["task_index"])
