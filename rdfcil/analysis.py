"""What the notebooks compute from a run: features, relation matrices, BatchNorm statistics,
synthetic samples, the refinement's effect, head ceilings. A run folder is read through
:class:`runs.RunView` (re-exported here with ``load_run``, ``run_folder`` and ``project_path``,
so that a notebook needs ``analysis`` and ``viz`` only)."""

from __future__ import annotations

import torch

from .data import Benchmark
from .distributed import pick_device
from .errors import RdfcilError
from .inversion import Generator, build_generator, frozen_copy, sample
from .losses import angle_relations, class_weights, distance_relations
from .runs import RunView, load_run, project_path, run_folder  # noqa: F401  (the notebooks' entry points)


@torch.no_grad()
def features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Pooled backbone features of ``images``."""
    model.eval()
    return torch.cat([model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def relation_matrices(feats: torch.Tensor, anchor: int = 0) -> dict[str, torch.Tensor]:
    """N x N views of a batch's relations: normalised pairwise distances, and the angles
    ``psi[anchor, j, k]`` seen from one anchor (a slice of the N^3 angle tensor)."""
    return {"distance": distance_relations(feats).cpu(), "angle": angle_relations(feats)[anchor].cpu()}


# --------------------------------------------------------------------------- helpers of the notebooks

def figure_saver(figures_dir, dataset: str):
    """``save(name) -> <figures_dir>/<dataset>/<name>`` (a figure's stem), or None for every
    name when ``figures_dir`` is None (the figures are then only shown). Prints the folder the
    figures go to (``runs.project_path``: relative to the project root)."""
    folder = project_path(figures_dir) / dataset if figures_dir else None
    print(f"figures: {folder}" if folder else "figures: shown only (figures_dir is None)")
    return lambda name: folder / name if folder else None


def class_names(dataset: str, order: list[int]) -> list[str]:
    """Names of the remapped labels (``order[i]`` is the original class of label ``i``)."""
    from .data import dataset_spec
    names = dataset_spec(dataset).class_names
    return [names[c] if names else str(c) for c in order]


def class_counts(bench: Benchmark) -> dict[str, list[int]]:
    """Images per remapped label in the training and the test split."""
    n = bench.tasks[-1].stop
    return {split: torch.bincount(images.labels.cpu().long(), minlength=n).tolist()
            for split, images in (("train", bench.train), ("test", bench.test))}


def task_table(bench: Benchmark, names: list[str] | None = None) -> list[dict]:
    """One row per task: its labels, original classes and image counts."""
    counts = class_counts(bench)
    rows = []
    for t, labels in enumerate(bench.tasks):
        rows.append({"task": t, "labels": f"{labels.start}..{labels.stop - 1}",
                     "classes": ", ".join((names or [str(c) for c in bench.class_order])[i] for i in labels),
                     "train images": sum(counts["train"][i] for i in labels),
                     "test images": sum(counts["test"][i] for i in labels)})
    return rows


def real_per_class(view: RunView, classes: range, per_class: int, split: str = "test"):
    """The first ``per_class`` real images of each class of ``classes``, sorted by class."""
    x, y = view.real(classes, None, split)
    keep = torch.cat([(y == c).nonzero().flatten()[:per_class] for c in classes])
    return x[keep], y[keep]


def untrained_generator(view: RunView, seed: int = 0) -> Generator:
    """A freshly initialised generator of the run's shape (eval mode): 'before inversion'."""
    torch.manual_seed(seed)
    return build_generator(view.config, view.bench.spec, pick_device(view.device)).eval()


def draw(generator: Generator, model: torch.nn.Module, n: int, seed: int = 0):
    """``n`` images of ``generator`` and their labels by ``model`` (argmax), seeded."""
    torch.manual_seed(seed)
    images, labels, _ = sample(generator, frozen_copy(model), n)
    return images, labels


@torch.no_grad()
def batchnorm_statistics(model: torch.nn.Module, images: torch.Tensor) -> list[dict]:
    """Per BatchNorm2d layer of ``model`` (forward order), the per-channel mean and variance of
    its input on ``images``, its running statistics and the feature-statistics term of the
    inversion loss (``inversion.bn_kl``), recorded by ``inversion.BatchNormStatistics``."""
    from .inversion import BatchNormStatistics
    modules = dict(model.named_modules())
    called: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, name=name: called.append(name))
               for name, m in modules.items() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = BatchNormStatistics(model)
    stats.keep_stats = True
    try:
        model.eval()
        with stats:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return [{"name": name, "kl": float(kl), "mean": mu.cpu(), "var": var.cpu(),
             "running_mean": modules[name].running_mean.cpu(), "running_var": modules[name].running_var.cpu()}
            for name, kl, (mu, var) in zip(called, stats.kls, stats.batch_stats)]


def relations(view: RunView, task: int, per_class: int = 16, anchor: int = 0) -> dict:
    """Relation matrices (``relation_matrices``) of the old model (after ``task - 1``) and the
    current one (after ``task``) on the same batch of task ``task``'s test images, and the
    drift ``mean |current - old|`` of each relation."""
    if not 1 <= task < view.num_finished:
        raise RdfcilError(f"relations need a finished incremental task in 1..{view.num_finished - 1}, got {task}")
    x, y = real_per_class(view, view.bench.tasks[task], per_class)
    old = relation_matrices(features(view.model(task - 1), x), anchor)
    current = relation_matrices(features(view.model(task), x), anchor)
    drift = {k: float((current[k] - old[k]).abs().mean()) for k in current}
    return {"labels": y.cpu(), "old": old, "current": current, "drift": drift}


def relation_drift(view: RunView, per_class: int = 16) -> dict[str, list]:
    """Relation drift of every incremental task: ``{"tasks": [1, ...], "angle": [...], "distance": [...]}``."""
    tasks = list(range(1, view.num_finished))
    drifts = [relations(view, t, per_class)["drift"] for t in tasks]
    return {"tasks": tasks, **{k: [d[k] for d in drifts] for k in ("angle", "distance")}}


def feature_sets(view: RunView, task: int, per_class: int = 40, synthetic: int = 200) -> dict[str, dict]:
    """Features of real test images of the old and new classes of ``task`` and of synthetic
    images of the generator inverted after ``task - 1``, under the model before the task
    (after ``task - 1``) and after it: inputs of ``viz.feature_scatter``."""
    if not 1 <= task < view.num_finished:
        raise RdfcilError(f"feature_sets needs a finished incremental task in 1..{view.num_finished - 1}, got {task}")
    x, y = real_per_class(view, view.bench.seen(task), per_class)
    kinds = ["real"] * len(y)
    if view.generator(task - 1) is not None and synthetic:
        x_s, y_s = view.synthetic(task - 1, synthetic)
        x, y, kinds = torch.cat([x, x_s]), torch.cat([y, y_s]), kinds + ["synthetic"] * len(y_s)
    return {title: {"features": features(view.model(t), x).cpu(), "labels": y.cpu(), "kinds": kinds}
            for title, t in ((f"before task {task} (model after task {task - 1})", task - 1),
                             (f"after task {task}", task))}


def refinement_effect(view: RunView, task: int) -> dict[str, dict]:
    """The state after RRL (the checkpoint's ``snapshots['rrl']``, before classifier
    refinement) and after refinement: confusion matrix, head weights, accuracy on old, new
    and all seen classes."""
    from .metrics import accuracy_on
    snapshot = view.checkpoint(task).get("snapshots", {}).get("rrl")
    if snapshot is None:
        raise RdfcilError(f"task {task} of '{view.folder}' has no snapshot before refinement "
                          "(task 0, a method without refinement, or refine=false)")
    tasks = view.bench.tasks

    def summary(confusion, head):
        confusion = torch.as_tensor(confusion).cpu().numpy()
        return {"confusion": confusion, "head": head.detach().cpu(),
                "old": accuracy_on(confusion, range(0, tasks[task].start)),
                "new": accuracy_on(confusion, tasks[task]),
                "all": float(100.0 * confusion.trace() / confusion.sum())}
    return {"before": summary(snapshot["confusion"], snapshot["head"]),
            "after": summary(view.confusion(task), view.model(task).head.weight)}


def expected_refinement_counts(view: RunView, task: int) -> torch.Tensor:
    """Expected label counts of the refinement of ``task`` (the input of
    ``losses.class_weights``): each step holds a real and an equally large synthetic batch, so
    the new classes count their training images and the old classes share as many synthetic
    samples in the proportions of the generator's pseudo-label coverage after ``task - 1``."""
    coverage = view.results.class_coverage[task - 1]
    if coverage is None:
        raise RdfcilError(f"no pseudo-label coverage recorded for the generator after task {task - 1}")
    new = view.bench.tasks[task]
    real = torch.bincount(view.bench.train.labels.cpu().long(), minlength=new.stop)[new.start:new.stop].float()
    coverage = torch.tensor(coverage, dtype=torch.float)
    return torch.cat([real.sum() * coverage / coverage.sum().clamp_min(1), real])


def task_view(view: RunView, task: int, per_class: int = 40, synthetic: int = 400) -> dict:
    """The inputs of ``viz.task_overview`` for one finished task, read from the run folder:
    the accuracy matrix so far, synthetic samples of the generator inverted after the task (for
    the last task, which is not inverted, those of the generator it replayed; None for methods
    without a generator), the confusion matrix, and features of test images of every seen
    class under the model after the task."""
    last = task == view.results.num_tasks - 1
    source = task - 1 if last else task  # the last task is not inverted: show the replay it learned from
    images, labels, images_title = None, None, "synthetic samples"
    if source >= 0 and view.generator(source) is not None:
        images, labels = view.synthetic(source, synthetic)
        images_title = (f"replay of task {task} (generator after task {source})" if last
                        else f"synthetic samples, generator after task {task}")
    x, y = real_per_class(view, view.bench.seen(task), per_class)
    return {"accuracy_matrix": view.results.accuracy_matrix[:task + 1], "images": images, "image_labels": labels,
            "images_title": images_title,
            "confusion": view.confusion(task), "features": features(view.model(task), x).cpu(),
            "feature_labels": y.cpu(), "task": task, "tasks": view.results.tasks[:task + 1],
            "denormalize": view.bench.test.denormalize}


def _fit_head(train_features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int,
              seed: int, weights: torch.Tensor | None = None) -> torch.nn.Linear:
    """A bias-free linear head fitted to frozen features by full-batch Adam (lr 0.01)."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(train_features.shape[1], num_classes, bias=False)
    with torch.no_grad():
        head.weight.copy_(0.01 * torch.randn(head.weight.shape, generator=generator))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(train_features), labels, weight=weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head


def head_ceilings(view: RunView, task: int, steps: int = 500, synthetic: int = 4000, seed: int = 0) -> dict:
    """How much of the accuracy after ``task`` the backbone's features allow, against what the
    classifier reached. On the frozen features of the model after ``task``, three heads are
    scored on the test images of every seen class (accuracy on all, old and new classes, %):

    - ``model``: the model's own head (the run's accuracy);
    - ``real``: a linear head fitted to real training images of every seen class (not
      data-free: the ceiling the features allow);
    - ``synthetic``: a linear head fitted, with the refinement's class weights, to the real
      training images of the task's new classes plus ``synthetic`` images of the generator
      inverted after ``task - 1`` labelled by the old model: what classifier refinement could
      reach with this replay if it ran to convergence.

    A large ``real - synthetic`` gap says the synthetic images stand for the real old classes
    poorly in the current feature space; a large ``synthetic - model`` gap says refinement
    stopped short."""
    if not 1 <= task < view.num_finished:
        raise RdfcilError(f"head_ceilings needs a finished incremental task in 1..{view.num_finished - 1}, got {task}")
    if view.generator(task - 1) is None:
        raise RdfcilError(f"method '{view.config.method}' trains no generator: no synthetic ceiling to measure")
    model, seen, new = view.model(task), view.bench.seen(task), view.bench.tasks[task]
    x_test, y_test = view.real(seen)
    test_features = features(model, x_test)
    x_train, y_train = view.real(seen, split="train")
    x_new, y_new = view.real(new, split="train")
    x_syn, y_syn = view.synthetic(task - 1, synthetic, seed)
    mixed_labels = torch.cat([y_new, y_syn])
    weights = class_weights(torch.bincount(mixed_labels, minlength=len(seen)).float())
    heads = {"real": _fit_head(features(model, x_train), y_train, len(seen), steps, seed),
             "synthetic": _fit_head(torch.cat([features(model, x_new), features(model, x_syn)]), mixed_labels,
                                    len(seen), steps, seed, weights)}
    scores = {}
    with torch.no_grad():
        predictions = {"model": model.head(test_features).argmax(1),
                       **{name: head(test_features).argmax(1) for name, head in heads.items()}}
    old = y_test < new.start
    for name, predicted in predictions.items():
        correct = (predicted == y_test).double()
        scores[name] = {"all": 100.0 * correct.mean().item(), "old": 100.0 * correct[old].mean().item(),
                        "new": 100.0 * correct[~old].mean().item()}
    return scores


# --------------------------------------------------------------------------- the frozen-feature families

def frozen_features(view: RunView, split: str = "train", task: int = 0, classes: range | None = None):
    """The features of every real image of ``classes`` (default: all of the run's classes) from
    the model after ``task`` (the backbone the prototype and analytic methods freeze after the
    base task): ``(features (N, d) fp32, labels (N,), images (N, C, H, W))`` on the view's device."""
    classes = range(0, view.bench.tasks[-1].stop) if classes is None else classes
    x, y = view.real(classes, None, split)
    return features(view.model(task), x).float(), y, x


def pca_class_statistics(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         others: torch.Tensor | None = None) -> dict:
    """The class means and covariances of ``feats`` (N, d) projected on the two leading principal
    axes of ``feats``, consistently: with ``P`` (2, d) the axes and ``m`` the mean of every row,
    ``points = (f - m) P^T``, ``means_c = (mu_c - m) P^T`` and ``covs_c = P Sigma_c P^T`` (the
    unbiased covariance), which are the mean and covariance of class c's projected points.
    Returns numpy float64 ``points`` (N, 2), ``labels`` (N,), ``means`` (C, 2), ``covs``
    (C, 2, 2) and ``explained`` (2,), the fraction of the total variance on each axis; with
    ``others`` (M, d), e.g. test features, also ``others`` (M, 2) on the same axes. Raises
    :class:`RdfcilError` when a class has fewer than 2 rows."""
    import numpy as np
    f = feats.detach().double().cpu().numpy()
    y = labels.detach().cpu().numpy().astype(int)
    centre = f.mean(axis=0)
    _, singular, vt = np.linalg.svd(f - centre, full_matrices=False)
    axes = vt[:2]
    means, covs = [], []
    for c in range(num_classes):
        rows = f[y == c]
        if len(rows) < 2:
            raise RdfcilError(f"class {c} has {len(rows)} feature rows; a covariance needs at least 2")
        means.append((rows.mean(axis=0) - centre) @ axes.T)
        covs.append(axes @ np.cov(rows, rowvar=False) @ axes.T)
    variance = singular ** 2
    out = {"points": (f - centre) @ axes.T, "labels": y, "means": np.stack(means), "covs": np.stack(covs),
           "explained": variance[:2] / variance.sum()}
    if others is not None:
        out["others"] = (others.detach().double().cpu().numpy() - centre) @ axes.T
    return out


def disagreements(labels: torch.Tensor, predictions: dict[str, torch.Tensor]) -> dict:
    """Where two classifiers' predictions (N,) differ: ``{"index": (M,) indices, "accuracy":
    {name: % correct on all N}, "right_when_disagree": {name: % correct on the M}}`` (exactly
    two entries in ``predictions``; the percentages of an empty set are NaN)."""
    (a, pa), (b, pb) = predictions.items()
    index = (pa != pb).nonzero().flatten()

    def percent(p, rows):
        return 100.0 * (p[rows] == labels[rows]).double().mean().item() if len(rows) else float("nan")

    every = torch.arange(len(labels), device=labels.device)
    return {"index": index, "accuracy": {k: percent(p, every) for k, p in predictions.items()},
            "right_when_disagree": {k: percent(p, index) for k, p in predictions.items()}}


@torch.no_grad()
def prototype_predictions(method, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """NCM's and FeCAM's predictions for ``images`` (N, C, H, W) from one FeCAM method after a
    task (e.g. ``view.method(t)`` of a FeCAM run): NCM is the nearest L2-normalised class mean
    (:func:`methods.ncm.ncm_distances` on FeCAM's stored means, which are NCM's: the raw feature
    means), FeCAM its own :meth:`~methods.fecam.FeCAM.scores`. Returns ``{"NCM": (N,),
    "FeCAM": (N,)}`` labels on the images' device."""
    from .methods.ncm import ncm_distances
    method.model.eval()
    ncm, fecam = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        ncm.append(ncm_distances(method.model.features(x).float(), method.means).argmin(1))
        fecam.append(method.scores(x).argmax(1))
    return {"NCM": torch.cat(ncm), "FeCAM": torch.cat(fecam)}


def analytic_over_splits(train: tuple, test: tuple, base: int, counts, size: int, gamma: float,
                         seed: int = 0) -> dict[int, dict]:
    """ACIL's analytic head (:class:`analytic.AnalyticClassifier`: random expansion of ``size``
    units with ReLU, ridge ``gamma``) learned on frozen features, task by task, for several
    splits of the same classes: the base task (labels ``0..base-1``) re-learned by the head, then
    the remaining classes in ``T`` equal incremental tasks for each ``T`` in ``counts``.
    ``train`` and ``test`` are ``(features (N, d), labels (N,))``; the expansion is drawn with
    ``seed``, the same for every split. Because the head is the ridge regression on every row
    seen (ACIL, Zhuang et al., NeurIPS 2022, "absolute memorisation"), the head after the last
    task does not depend on ``T``. Returns ``{T: {"seen": [classes seen after each task],
    "accuracy": [% on the seen test classes after each task], "final": % after the last, "weight": the last head's W (size, classes)
    float64}}``; raises :class:`RdfcilError` when a ``T`` does not divide the remaining classes."""
    from .analytic import AnalyticClassifier
    (train_f, train_y), (test_f, test_y) = train, test
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    out = {}
    for T in counts:
        if T < 1 or (num_classes - base) % T:
            raise RdfcilError(f"{T} incremental tasks do not divide the {num_classes - base} classes after "
                              f"the base task")
        width = (num_classes - base) // T
        stops = [base] + [base + width * (i + 1) for i in range(T)]
        head = AnalyticClassifier(train_f.shape[1], size, gamma, seed, train_f.device)
        accuracy, start = [], 0
        for stop in stops:
            chosen = (train_y >= start) & (train_y < stop)
            head.fit(train_f[chosen], train_y[chosen], range(start, stop))
            head.finish()
            seen = test_y < stop
            predicted = head(test_f[seen])[:, :stop].argmax(1)
            accuracy.append(100.0 * (predicted == test_y[seen]).double().mean().item())
            start = stop
        out[T] = {"seen": stops, "accuracy": accuracy, "final": accuracy[-1], "weight": head.main.weight}
    return out
