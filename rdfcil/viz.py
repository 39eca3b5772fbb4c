"""Figures for the notebooks and the paper (the tables are :mod:`rdfcil.tables`).

Every figure function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``: no
global state, no backend to choose, so it works headless (a bare figure renders through Agg)
and in Jupyter (the last expression of a cell, or ``display(fig)``; it renders itself as PNG
even without ``%matplotlib inline``). Given ``save=stem`` it also writes ``stem.png`` and
``stem.pdf`` through :func:`save_figure`.

One style for all figures: :func:`style` is a context manager around ``rcParams`` used inside
each function; importing this module changes nothing. Methods keep one colour everywhere
(their registered ``color``, :func:`method_color`); classes are coloured by ``tab10`` / ``tab20``.

Inputs are plain arrays or tensors (anything ``numpy.asarray`` takes after ``.detach().cpu()``);
the notebooks compute them with :mod:`rdfcil.analysis`.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from cycler import cycler
from matplotlib.figure import Figure

from .tables import method_label, method_rank, split_label

PALETTE = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#000000"]


def method_color(method: str) -> str:
    """A method's colour in every figure, from its registration (``methods.METHODS``)."""
    from .methods import METHODS
    return METHODS[method].color if method in METHODS else "black"

STYLE = {
    "figure.dpi": 100, "figure.facecolor": "white", "figure.constrained_layout.use": True,
    "savefig.dpi": 200, "savefig.facecolor": "white", "savefig.bbox": "tight", "savefig.pad_inches": 0.04,
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "figure.titlesize": 10.5,
    "figure.titleweight": "bold", "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "legend.frameon": False, "legend.title_fontsize": 8,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.6, "axes.axisbelow": True, "axes.prop_cycle": cycler(color=PALETTE),
    "lines.linewidth": 1.5, "lines.markersize": 4, "image.cmap": "viridis", "image.interpolation": "nearest",
    "pdf.fonttype": 42, "ps.fonttype": 42,
}

# Fixed metadata: regenerating a figure from the same numbers gives the same bytes.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None, "Producer": None,
                                                "Creator": None}}


@contextlib.contextmanager
def style(**extra):
    """The lab's figure style (``rcParams``) for the enclosed code; restored on exit."""
    with matplotlib.rc_context({**STYLE, **extra}):
        yield


class LabFigure(Figure):
    """A figure that renders itself as PNG in IPython (``_repr_png_``), so that it shows in a
    notebook even without ``%matplotlib inline``; with it, the inline backend's printer is used."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        with style():
            self.savefig(buffer, format="png", dpi=100, metadata=_METADATA["png"])
        return buffer.getvalue()


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with constrained layout (call inside :func:`style`)."""
    return LabFigure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (folders created); returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with style():
        for fmt in formats:
            path = stem.with_name(stem.name + "." + fmt)
            fig.savefig(path, format=fmt, metadata=_METADATA.get(fmt))
            paths.append(path)
    return paths


def _finish(fig: Figure, save) -> Figure:
    if save is not None:
        save_figure(fig, save)
    return fig


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _class_colors(n: int):
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def _name(names, c: int) -> str:
    if names is None:
        return str(c)
    return str(names[c]) if not isinstance(names, Mapping) else str(names.get(c, c))


def _rotation(labels) -> int:
    """Vertical tick labels when they are long or many."""
    return 90 if len(labels) > 16 or max((len(str(t)) for t in labels), default=0) > 3 else 0


def _task_lines(ax, tasks, n: int, axis: str = "both", color="white", lw=1.0):
    """Lines between the label ranges of consecutive tasks on a heatmap of ``n`` classes."""
    for start, stop in tasks or []:
        if 0 < stop < n:
            if axis in ("both", "x"):
                ax.axvline(stop - 0.5, color=color, lw=lw)
            if axis in ("both", "y"):
                ax.axhline(stop - 0.5, color=color, lw=lw)


def _heat(ax, matrix, **kwargs):
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax.imshow(matrix, aspect="equal", **kwargs)


# --------------------------------------------------------------------------- images

def to_display(images, denormalize=None) -> np.ndarray:
    """Normalised images ``(N, C, H, W)`` -> ``(N, H, W, C)`` in [0, 1]: through ``denormalize``
    (e.g. ``bench.test.denormalize``) when given, else a min-max stretch per image."""
    if denormalize is not None:
        x = _np(denormalize(images))
    else:
        x = _np(images).astype(np.float64)
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-8)
    return np.clip(x, 0, 1).transpose(0, 2, 3, 1)


def _strip(images: np.ndarray, count: int, gap: int = 1) -> np.ndarray:
    """``count`` images side by side with a white gap, blank where fewer are given."""
    h, w, c = images.shape[1:] if len(images) else (8, 8, 1)
    strip = np.ones((h, count * (w + gap) - gap, c))
    for i, image in enumerate(images[:count]):
        strip[:, i * (w + gap):i * (w + gap) + w] = image
    return strip


def image_grid(sources: Mapping[str, tuple], classes: Sequence[int] | None = None, per_class: int = 6,
               class_names=None, denormalize=None, title: str | None = None, save=None) -> Figure:
    """A row per class, a column per source (e.g. ``{"real": (x, y), "synthetic": (x_s, y_s)}``),
    ``per_class`` images of that class in each cell; an empty cell says the source has none."""
    data = {name: (to_display(x, denormalize), _np(y).astype(int)) for name, (x, y) in sources.items()}
    if classes is None:
        classes = sorted(set().union(*(set(y.tolist()) for _, y in data.values())))
    classes = list(classes)
    some = next((x for x, _ in data.values() if len(x)), None)
    h, w = (some.shape[1], some.shape[2]) if some is not None else (8, 8)
    cell_w = per_class * 0.42 * max(w / h, 0.5)
    with style():
        fig = new_figure(0.7 + cell_w * len(data), 0.35 + 0.46 * len(classes))
        axes = np.array(fig.subplots(len(classes), len(data), squeeze=False))
        for j, (name, (x, y)) in enumerate(data.items()):
            for i, c in enumerate(classes):
                ax = axes[i, j]
                chosen = x[y == c]
                strip = _strip(chosen, per_class)
                ax.imshow(strip.squeeze(-1) if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if not len(chosen):
                    ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center",
                            color="#EE6677", fontsize=8)
                if i == 0:
                    ax.set_title(name)
                if j == 0:
                    ax.set_ylabel(_name(class_names, c), rotation=0, ha="right", va="center", fontsize=8)
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


# --------------------------------------------------------------------------- curves

def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[:window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def loss_curves(curves: Mapping, terms: Sequence[str] | None = None, smooth: int = 10, logy: bool = True,
                xlabel: str = "inversion step", title: str | None = None, save=None) -> Figure:
    """One panel per loss term, one line per series: ``{"task 0": {"content": [...], ...}, ...}``
    (or a single ``{term: values}``). Thin lines are the raw values, thick ones a moving mean."""
    if curves and all(isinstance(v, Sequence) and not isinstance(v, Mapping) for v in curves.values()):
        curves = {"": curves}
    terms = list(terms or dict.fromkeys(t for h in curves.values() for t in h))
    cols = min(len(terms), 5)
    rows = math.ceil(len(terms) / cols)
    with style():
        fig = new_figure(2.3 * cols + 0.3, 2.0 * rows + 0.4)
        axes = np.array(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, term in zip(axes, terms):
            for k, (label, history) in enumerate(curves.items()):
                if term not in history:
                    continue
                values = np.asarray(history[term], dtype=float)
                color = PALETTE[k % len(PALETTE)]
                steps = np.arange(len(values))
                ax.plot(steps, values, color=color, lw=0.5, alpha=0.35)
                ax.plot(steps, _smooth(values, smooth), color=color, label=label or None)
            if logy and all(np.all(np.asarray(h.get(term, [1.0]), float) > 0) for h in curves.values()):
                ax.set_yscale("log")
            ax.set_title(term.replace("_", " "))
            ax.set_xlabel(xlabel)
        for ax in axes[len(terms):]:
            ax.set_visible(False)
        axes[0].set_ylabel("weighted loss")
        if len(curves) > 1:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right center")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


def drift_curves(drift: Mapping[str, Mapping[str, Sequence[float]]], tasks: Sequence[int] | None = None,
                 title: str | None = None, save=None) -> Figure:
    """Relation drift per task: ``{"with RKD": {"angle": [...], "distance": [...]}, ...}``
    (e.g. ``analysis.relation_drift``, whose ``"tasks"`` entry gives the x values), one panel
    per relation, one line per run."""
    if tasks is None:
        tasks = next(iter(drift.values())).get("tasks")
    kinds = list(dict.fromkeys(k for d in drift.values() for k in d if k != "tasks"))
    with style():
        fig = new_figure(3.0 * len(kinds) + 0.4, 2.5)
        axes = np.array(fig.subplots(1, len(kinds), squeeze=False)).ravel()
        for ax, kind in zip(axes, kinds):
            for k, (label, values) in enumerate(drift.items()):
                if kind in values:
                    ax.plot(list(tasks), values[kind], marker="o", color=PALETTE[k % len(PALETTE)], label=label)
            ax.set_title(f"{kind} relations")
            ax.set_xlabel("task")
            ax.set_xticks(list(tasks))
            ax.set_ylim(bottom=0)
        axes[0].set_ylabel("mean |current − old|")
        axes[-1].legend()
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


# --------------------------------------------------------------------------- BatchNorm statistics

BN_COLORS = ["#228833", "#BBBBBB", "#EE6677", "#4477AA", "#CCBB44"]


def bn_statistics(stats: Mapping[str, Sequence[Mapping]], layer: int = 0, title: str | None = None,
                  save=None) -> Figure:
    """Per-BatchNorm-layer input statistics of several sources against the running statistics.

    ``stats[source]`` is a list over layers (forward order) of dicts with ``name``, ``kl``,
    ``mean``, ``var``, ``running_mean``, ``running_var`` (see ``analysis.batchnorm_statistics``).
    Panels: the KL term of the inversion loss per layer; channel means and variances of
    ``layer`` against the running ones (on the diagonal = matched)."""
    with style():
        fig = new_figure(10.0, 3.0)
        ax_kl, ax_mu, ax_var = fig.subplots(1, 3, width_ratios=[1.6, 1, 1])
        for k, (source, layers) in enumerate(stats.items()):
            color = BN_COLORS[k % len(BN_COLORS)]
            kl = [float(entry["kl"]) for entry in layers]
            ax_kl.plot(range(len(kl)), kl, marker="o", color=color, label=f"{source} (mean {np.mean(kl):.2g})")
            entry = layers[layer]
            ax_mu.scatter(_np(entry["running_mean"]), _np(entry["mean"]), s=10, color=color, alpha=0.8,
                          label=source)
            ax_var.scatter(_np(entry["running_var"]), _np(entry["var"]), s=10, color=color, alpha=0.8)
        ax_kl.set_yscale("log")
        ax_kl.set_xlabel("BatchNorm layer (forward order)")
        ax_kl.set_ylabel("KL(running ‖ batch), channel mean")
        ax_kl.set_title("feature-statistics term per layer")
        fig.legend(*ax_kl.get_legend_handles_labels(), loc="outside lower center", ncols=len(stats))
        name = next(iter(stats.values()))[layer].get("name", f"layer {layer}")
        ax_kl.xaxis.get_major_locator().set_params(integer=True)
        for ax, what, key in ((ax_mu, "mean", "mean"), (ax_var, "variance", "var")):
            values = np.concatenate([np.concatenate([_np(layers[layer][key]).ravel(), _np(layers[layer]["running_" + key]).ravel()])
                                     for layers in stats.values()])
            if what == "variance":
                values = values[values > 0]
                lo, hi = values.min() / 1.5, values.max() * 1.5
                ax.set_xscale("log"), ax.set_yscale("log")
            else:
                pad = 0.05 * (values.max() - values.min() + 1e-12)
                lo, hi = values.min() - pad, values.max() + pad
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", zorder=0)
            ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel(f"running {what}")
            ax.set_ylabel(f"batch {what}")
            ax.set_title(f"channel {what}s, {name}")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


# --------------------------------------------------------------------------- per-class bars

def pseudo_label_histogram(coverage, class_names=None, titles: Sequence[str] | None = None,
                           title: str | None = None, save=None) -> Figure:
    """Pseudo-label counts of synthetic samples per old class, one panel per inversion.

    ``coverage``: one list of counts, or a list over tasks (``None`` entries, e.g. the last
    task, are skipped). The dashed line is a uniform share; red marks a vanished class."""
    if coverage and not isinstance(coverage[0], (list, tuple, np.ndarray, type(None))):
        coverage = [coverage]
    panels = [(t, np.asarray(c)) for t, c in enumerate(coverage) if c is not None]
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    widths = [max(len(c) for _, c in panels[i::cols]) + 2 for i in range(cols)]
    with style():
        fig = new_figure(min(1.2 + 0.3 * sum(widths), 16.0), 0.5 + 2.3 * rows)
        axes = np.array(fig.subplots(rows, cols, squeeze=False, width_ratios=widths)).ravel()
        for ax, (t, counts) in zip(axes, panels):
            colors = ["#EE6677" if n == 0 else PALETTE[0] for n in counts]
            ax.bar(range(len(counts)), counts, color=colors, width=0.75)
            ax.axhline(counts.sum() / len(counts), color="black", ls="--", lw=0.8)
            for c in np.flatnonzero(counts == 0):
                ax.plot([c], [0], marker="x", color="#EE6677", ms=7, mew=1.5, clip_on=False, zorder=3)
            ticks = [_name(class_names, c) for c in range(len(counts))]
            ax.set_xticks(range(len(counts)), ticks, rotation=_rotation(ticks))
            ax.set_xlim(-0.6, len(counts) - 0.4)
            covered = int((counts > 0).sum())
            ax.set_title(titles[t] if titles else f"after task {t}: {covered}/{len(counts)} classes")
            ax.set_xlabel("pseudo-label")
            ax.grid(axis="x", visible=False)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        for ax in axes[::cols]:
            ax.set_ylabel("synthetic samples")
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], color="black", ls="--", lw=0.8, label="uniform share"),
                   Line2D([], [], color="#EE6677", marker="x", ls="none", mew=1.5, label="vanished class")]
        fig.legend(handles=handles, loc="outside lower center", ncols=2)
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


def per_class_bars(series: Mapping[str, Sequence[float]], ylabel: str, tasks=None, class_names=None,
                   title: str | None = None, logy: bool = False, save=None) -> Figure:
    """Grouped bars per class (one bar per series); tasks shaded alternately and named on top."""
    n = max(len(v) for v in series.values())
    with style():
        fig = new_figure(min(max(4.5, 0.22 * n * (1 + len(series)) + 1.2), 14.0), 3.0)
        ax = fig.subplots()
        width = 0.8 / len(series)
        for k, (label, values) in enumerate(series.items()):
            values = _np(values)
            ax.bar(np.arange(len(values)) + (k - (len(series) - 1) / 2) * width, values, width,
                   color=PALETTE[k % len(PALETTE)], label=label, zorder=2)
        for i, (start, stop) in enumerate(tasks or []):
            if start < n:
                if i % 2 == 1:
                    ax.axvspan(start - 0.5, min(stop, n) - 0.5, color="#000000", alpha=0.06, lw=0, zorder=0)
                ax.text((start + min(stop, n) - 1) / 2, 1.0, f"task {i}", ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())
        ticks = [_name(class_names, c) for c in range(n)]
        ax.set_xticks(range(n), ticks, rotation=_rotation(ticks))
        ax.set_xlim(-0.6, n - 0.4)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("class")
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        if len(series) > 1:
            fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(series), 3))
        if title:
            ax.set_title(title, pad=14 if tasks else 4)
    return _finish(fig, save)


def weight_norms(weights: Mapping[str, object], new_classes: range | None = None, tasks=None,
                 class_names=None, title: str | None = None, save=None) -> Figure:
    """L2 norms of the classifier's weight rows per class, one bar per series (e.g. before and
    after refinement); ``weights`` holds (classes x features) matrices or norms. With
    ``new_classes`` each series' label gives the mean norm of new over old classes."""
    series = {}
    for label, w in weights.items():
        w = _np(w)
        norms = np.linalg.norm(w, axis=1) if w.ndim == 2 else w
        if new_classes is not None and new_classes.start > 0:
            ratio = norms[new_classes.start:new_classes.stop].mean() / norms[:new_classes.start].mean()
            label = f"{label} (new/old = {ratio:.2f})"
        series[label] = norms
    return per_class_bars(series, "‖w_c‖ (weight-row norm)", tasks, class_names,
                          title or "classifier weight-row norms", save=save)


def old_new_bars(series: Mapping[str, Mapping[str, object]], categories: Sequence[str] = ("old", "new", "all"),
                 x_labels: Sequence[str] | None = None, title: str | None = None, save=None) -> Figure:
    """Accuracy on old / new / all classes for several conditions (bars, one per condition).

    Values are floats (one panel, the categories along x) or per-task lists (a panel per
    category, tasks along x, labelled by ``x_labels``)."""
    first = next(iter(series.values()))
    per_task = isinstance(first[categories[0]], (list, tuple, np.ndarray))
    panels = list(categories) if per_task else [None]
    with style():
        fig = new_figure(0.5 + (3.0 if per_task else 3.6) * len(panels), 2.8)
        axes = np.array(fig.subplots(1, len(panels), squeeze=False)).ravel()
        width = 0.8 / len(series)
        for ax, panel in zip(axes, panels):
            groups = (x_labels or [str(i) for i in range(len(first[panel]))]) if per_task else list(categories)
            for k, (label, values) in enumerate(series.items()):
                heights = np.asarray([np.nan if v is None else v for v in (values[panel] if per_task else
                                      [values[c] for c in categories])], dtype=float)
                x = np.arange(len(heights)) + (k - (len(series) - 1) / 2) * width
                bars = ax.bar(x, np.nan_to_num(heights), width, color=PALETTE[k % len(PALETTE)], label=label)
                ax.bar_label(bars, [("" if np.isnan(h) else f"{h:.0f}") for h in heights], fontsize=6.5, padding=1)
            ax.set_xticks(range(len(groups)), groups)
            ax.set_ylim(0, 109)
            ax.grid(axis="x", visible=False)
            ax.set_title(f"{panel} classes" if per_task else "accuracy by class group")
        axes[0].set_ylabel("accuracy (%)")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(series))
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


# --------------------------------------------------------------------------- heatmaps

def relation_heatmaps(rows: Mapping[str, Mapping[str, object]], labels=None, kind: str = "angle",
                      title: str | None = None, save=None) -> Figure:
    """Relation matrices of the old and the current model on one batch, per run (a row each:
    ``{"with RKD": {"old": A, "current": B}, ...}``), and their difference ``current - old``.
    ``labels`` (the batch's classes, sorted) draws class boundaries."""
    mats = {r: {k: _np(v) for k, v in m.items()} for r, m in rows.items()}
    values = np.concatenate([m[k].ravel() for m in mats.values() for k in ("old", "current")])
    lo, hi = np.percentile(values, [1, 99])
    if kind == "angle":
        lo, hi = -1.0, 1.0
    diff = max(np.abs(m["current"] - m["old"]).max() for m in mats.values())
    bounds = []
    if labels is not None:
        labels = _np(labels)
        bounds = np.flatnonzero(np.diff(labels)) + 0.5
    with style():
        fig = new_figure(8.6, 2.7 * len(mats) + 0.4)
        axes = np.array(fig.subplots(len(mats), 3, squeeze=False))
        for i, (run, m) in enumerate(mats.items()):
            ims = []
            for j, (key, matrix, cmap, vmin, vmax) in enumerate((
                    ("old model", m["old"], "viridis", lo, hi),
                    ("current model", m["current"], "viridis", lo, hi),
                    ("current − old", m["current"] - m["old"], "RdBu_r", -diff, diff))):
                ax = axes[i, j]
                ims.append(_heat(ax, matrix, cmap=cmap, vmin=vmin, vmax=vmax))
                for b in bounds:
                    ax.axvline(b, color="white", lw=0.6), ax.axhline(b, color="white", lw=0.6)
                ax.set_xticks([]), ax.set_yticks([])
                extra = f" (mean |Δ| = {np.abs(matrix).mean():.3f})" if j == 2 else ""
                ax.set_title(key + extra)
            axes[i, 0].set_ylabel(run, fontsize=9.5, fontweight="bold")
            fig.colorbar(ims[0], ax=axes[i, :2], shrink=0.85, label=f"{kind} relation")
            fig.colorbar(ims[2], ax=axes[i, 2], shrink=0.85, label="difference")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


def _confusion_panel(ax, confusion, tasks, class_names, annotate):
    c = _np(confusion).astype(float)
    rows = np.maximum(c.sum(axis=1, keepdims=True), 1)
    percent = 100 * c / rows
    im = _heat(ax, percent, cmap="Blues", vmin=0, vmax=100)
    n = len(c)
    _task_lines(ax, tasks, n, color="#EE6677", lw=0.8)
    if annotate:
        for a in range(n):
            for b in range(n):
                if percent[a, b] >= 0.5:
                    ax.text(b, a, f"{percent[a, b]:.0f}", ha="center", va="center", fontsize=7 if n <= 6 else 5.5,
                            color="white" if percent[a, b] > 55 else "black")
    ticks = range(n) if n <= 20 else range(0, n, max(1, n // 10))
    ax.set_xticks(list(ticks), [_name(class_names, t) for t in ticks],
                  rotation=_rotation([_name(class_names, t) for t in ticks]))
    ax.set_yticks(list(ticks), [_name(class_names, t) for t in ticks])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return im, float(100 * np.trace(c) / max(c.sum(), 1))


def confusion_heatmap(confusions, tasks=None, class_names=None, annotate: bool | None = None,
                      title: str | None = None, save=None) -> Figure:
    """Row-normalised confusion matrices (% of each true class), one panel per entry of
    ``confusions`` (or one matrix); red lines separate the tasks."""
    if not isinstance(confusions, Mapping):
        confusions = {"": confusions}
    n = len(_np(next(iter(confusions.values()))))
    annotate = n <= 12 if annotate is None else annotate
    side = min(max(2.6, 0.3 * n), 6.0)
    with style():
        fig = new_figure(0.9 + (side + 0.3) * len(confusions), side + 0.5)
        axes = np.array(fig.subplots(1, len(confusions), squeeze=False)).ravel()
        for ax, (label, confusion) in zip(axes, confusions.items()):
            im, accuracy = _confusion_panel(ax, confusion, tasks, class_names, annotate)
            ax.set_title(f"{label} (accuracy {accuracy:.1f} %)" if label else f"accuracy {accuracy:.1f} %")
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="% of the true class")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


def _matrix_panel(ax, matrix, annotate):
    t = len(matrix)
    a = np.full((t, t), np.nan)
    for i, row in enumerate(matrix):
        a[i, :len(row)] = [np.nan if v is None else v for v in row]
    im = _heat(ax, a, cmap="viridis", vmin=0, vmax=100)
    if annotate:
        for i in range(t):
            for j in range(i + 1):
                if not np.isnan(a[i, j]):
                    ax.text(j, i, f"{a[i, j]:.0f}", ha="center", va="center", fontsize=6.5 if t <= 8 else 5,
                            color="white" if a[i, j] < 60 else "black")
    ticks = list(range(t)) if t <= 12 else list(range(0, t, max(1, t // 6)))
    ax.set_xticks(ticks), ax.set_yticks(ticks)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after learning task")
    return im


def _data(r) -> dict:
    return r.data if hasattr(r, "data") else dict(r)


def split_title(num_tasks: int, first_task_classes: int | None, num_classes: int) -> str:
    """``5 tasks × 2 classes`` or ``50 + 5 × 10 classes`` (figure titles)."""
    if not first_task_classes or first_task_classes * num_tasks == num_classes:
        return f"{num_tasks} tasks × {num_classes // num_tasks} classes"
    return split_label(num_tasks, first_task_classes, num_classes) + " classes"


def _groups(results) -> dict:
    """``{(num_tasks, first, classes): {method: [results dicts]}}`` in a stable method order."""
    groups: dict = {}
    for r in map(_data, results):
        key = (r["num_tasks"], r.get("first_task_classes"), r["tasks"][-1][1])
        groups.setdefault(key, {}).setdefault(r["method"], []).append(r)
    return {k: dict(sorted(v.items(), key=lambda kv: method_rank(kv[0]))) for k, v in sorted(groups.items())}


def accuracy_matrices(results, title: str | None = None, save=None) -> Figure:
    """Accuracy matrices ``A[i][j]`` (mean over seeds): a row per split, a column per method."""
    groups = _groups(results)
    cols = max(len(g) for g in groups.values())
    t_max = max(k[0] for k in groups)
    side = min(2.3 + 0.12 * t_max, 5.0)
    with style():
        fig = new_figure(0.8 + side * cols, 0.5 + (side + 0.2) * len(groups))
        axes = np.array(fig.subplots(len(groups), cols, squeeze=False))
        im = None
        for i, ((tasks, first, classes), methods) in enumerate(groups.items()):
            for j, (method, runs) in enumerate(methods.items()):
                stacked = np.mean([np.array([row + [np.nan] * (tasks - len(row)) for row in r["accuracy_matrix"]],
                                            dtype=float) for r in runs], axis=0)
                im = _matrix_panel(axes[i, j], [list(row[:k + 1]) for k, row in enumerate(stacked)], tasks <= 12)
                seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
                axes[i, j].set_title(f"{method_label(method)}, {split_label(tasks, first, classes)}{seeds}")
                if j:
                    axes[i, j].set_ylabel("")
            for ax in axes[i, len(methods):]:
                ax.set_visible(False)
        fig.colorbar(im, ax=[a for a in axes.ravel() if a.get_visible()], shrink=0.8, label="accuracy (%)")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


# --------------------------------------------------------------------------- accuracy curves

def accuracy_curves(results, published=None, title: str | None = None, save=None) -> Figure:
    """Accuracy on all seen classes after each task, mean ± std band over seeds, one line per
    method, one panel per split. ``published(dataset, method, num_tasks, first)`` (e.g.
    :func:`rdfcil.paper.published`) adds the published final accuracy as a star."""
    groups = _groups(results)
    with style():
        fig = new_figure(0.6 + 3.6 * len(groups), 3.0)
        axes = np.array(fig.subplots(1, len(groups), squeeze=False)).ravel()
        for ax, ((tasks, first, classes), methods) in zip(axes, groups.items()):
            for method, runs in methods.items():
                color = method_color(method)
                x = np.array([stop for _, stop in runs[0]["tasks"]])
                acc = np.array([r["accuracy_per_task"] for r in runs], dtype=float)
                mean = acc.mean(axis=0)
                label = method_label(method)
                ax.plot(x, mean, marker="o", color=color, label=label, ms=3.5)
                if len(runs) > 1:
                    std = acc.std(axis=0, ddof=1)
                    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, lw=0)
                paper = published(runs[0]["dataset"], method, tasks, first) if published else None
                if paper and paper.get("last") is not None:
                    ax.errorbar([x[-1]], [paper["last"]], yerr=[paper.get("last_std") or 0], marker="*", ms=9,
                                color=color, mec="black", mew=0.5, capsize=2, ls="none")
            ax.set_title(f"{runs[0]['dataset']}: {split_title(tasks, first, classes)}")
            ax.set_xlabel("classes seen")
            ax.set_ylim(0, 102)
            ax.set_xticks(x if len(x) <= 12 else x[::max(1, len(x) // 6)])
        axes[0].set_ylabel("accuracy on seen classes (%)")
        handles, labels = axes[-1].get_legend_handles_labels()
        if published and any(published(d["dataset"], d["method"], d["num_tasks"], d.get("first_task_classes"))
                             for d in map(_data, results)):
            from matplotlib.lines import Line2D
            handles.append(Line2D([], [], marker="*", ms=9, color="grey", mec="black", mew=0.5, ls="none"))
            labels.append("published final")
        fig.legend(handles, labels, loc="outside right center")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


# --------------------------------------------------------------------------- two or more runs side by side

# Config keys never used to tell runs apart in a label (they do not change the numbers, or are noise).
_LABEL_SKIP = {"out", "notes", "progress", "logger", "log_interval", "device", "num_workers", "eval_batch_size",
               "data_root", "path"}


def run_labels(configs: Sequence[Mapping]) -> list[str]:
    """A label per run from the config keys whose values differ between the runs
    (``R-DFCIL, seed 1``, ``ABD, epochs 40``); the method alone when nothing else differs."""
    keys = [k for k in dict.fromkeys(k for c in configs for k in c)
            if k not in _LABEL_SKIP and k != "method" and len({repr(c.get(k)) for c in configs}) > 1]
    labels = []
    for c in configs:
        parts = [method_label(c.get("method"))]
        parts += [f"{k} {c.get(k)}" for k in keys[:3]]
        labels.append(", ".join(parts))
    if len(set(labels)) < len(labels):  # still ambiguous: number them
        labels = [f"{i}: {label}" for i, label in enumerate(labels)]
    return labels


def compare_runs(runs, labels: Sequence[str] | None = None, title: str | None = None, save=None) -> Figure:
    """Finished (or partly finished) runs side by side, whatever their methods and settings:
    accuracy on the seen classes after each task, one line per run, then each run's accuracy
    matrix. ``runs``: run folders, Results, or a table from :func:`rdfcil.collect`;
    ``labels`` default to the config keys that differ between the runs."""
    from .runtable import frame, read_run
    if hasattr(runs, "iterrows"):
        rows = [r for _, r in runs.iterrows()]
    else:
        rows = [read_run(r) if isinstance(r, (str, Path)) else frame([r]).iloc[0] for r in runs]
    if not rows:
        raise ValueError("compare_runs needs at least one run")
    configs = [{k: v for k, v in dict(r).items() if k in _config_keys()} for r in rows]
    labels = list(labels) if labels is not None else run_labels(configs)
    n = len(rows)
    t_max = max(max(len(r["accuracy_per_task"]), 1) for r in rows)
    side = min(2.3 + 0.12 * t_max, 4.0)
    with style():
        fig = new_figure(4.2 + side * n, side + 0.6)
        grid = fig.add_gridspec(1, n + 1, width_ratios=[1.6] + [1.0] * n)
        ax = fig.add_subplot(grid[0, 0])
        for i, (r, label) in enumerate(zip(rows, labels)):
            acc = list(r["accuracy_per_task"])
            ax.plot(range(len(acc)), acc, marker="o", ms=3.5, label=label, color=PALETTE[i % len(PALETTE)])
        ax.set_xlabel("after learning task")
        ax.set_ylabel("accuracy on seen classes (%)")
        ax.set_ylim(0, 102)
        ax.set_xticks(range(t_max) if t_max <= 12 else range(0, t_max, max(1, t_max // 6)))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1 if n > 2 else n)
        ax.set_title("accuracy after each task")
        im = None
        for i, (r, label) in enumerate(zip(rows, labels)):
            panel = fig.add_subplot(grid[0, i + 1])
            matrix = [list(row) for row in r["accuracy_matrix"]]
            if not matrix:
                panel.set_visible(False)
                continue
            im = _matrix_panel(panel, matrix, len(matrix) <= 12)
            panel.set_title(_wrap_parts(label), color=PALETTE[i % len(PALETTE)])
            if i:
                panel.set_ylabel("")
        if im is not None:
            fig.colorbar(im, ax=fig.axes[1:], shrink=0.8, label="accuracy (%)")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


def _wrap_parts(label: str, width: int = 28) -> str:
    """``a, b, c`` on lines of at most ``width`` characters, broken only after a comma."""
    lines: list[str] = []
    for part in label.split(", "):
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += ", " + part
        else:
            lines.append(part)
    return ",\n".join(lines)


def _config_keys() -> set:
    from .config import FIELD_NAMES
    return set(FIELD_NAMES)


# --------------------------------------------------------------------------- feature scatter

def embed_2d(features, seed: int = 0, min_points: int = 20) -> tuple[np.ndarray, str]:
    """A 2-D UMAP embedding of ``features``; PCA when there are fewer than ``min_points``
    points (UMAP's neighbour graph needs more). Returns ``(embedding, method name)``."""
    x = _np(features).astype(np.float32)
    if len(x) >= min_points:
        import umap
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reducer = umap.UMAP(n_neighbors=min(15, len(x) - 1), min_dist=0.3, random_state=seed, n_jobs=1)
            return reducer.fit_transform(x), "UMAP"
    centred = x - x.mean(axis=0)
    if len(x) < 2:
        return np.zeros((len(x), 2)), "PCA"
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:2].T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out, "PCA"


MARKERS = {"real": "o", "synthetic": "^"}


def feature_scatter(panels: Mapping[str, Mapping[str, object]], class_names=None, num_classes: int | None = None,
                    seed: int = 0, title: str | None = None, save=None) -> Figure:
    """UMAP scatter of features, one panel per entry: ``{"before task 2": {"features": F,
    "labels": y, "kinds": ["real", "synthetic", ...]}}``; colour = class, marker = kind
    (real: dot, synthetic: triangle). Each panel is embedded on its own."""
    prepared = {}
    for name, p in panels.items():
        labels = _np(p["labels"]).astype(int)
        kinds = np.asarray(p.get("kinds", ["real"] * len(labels)))
        embedding, how = embed_2d(p["features"], seed)
        prepared[name] = (embedding, labels, kinds, how)
    n = num_classes or 1 + max(int(v[1].max()) for v in prepared.values() if len(v[1]))
    colors = _class_colors(n)
    with style():
        fig = new_figure(0.8 + 3.3 * len(prepared) + 1.2, 3.5)
        axes = np.array(fig.subplots(1, len(prepared), squeeze=False)).ravel()
        for ax, (name, (embedding, labels, kinds, how)) in zip(axes, prepared.items()):
            for kind in dict.fromkeys(kinds.tolist()):
                for c in np.unique(labels):
                    chosen = (labels == c) & (kinds == kind)
                    if chosen.any():
                        synthetic = kind != "real"
                        ax.scatter(embedding[chosen, 0], embedding[chosen, 1], s=14 if synthetic else 8,
                                   marker=MARKERS.get(kind, "s"), facecolors="none" if synthetic else colors[c],
                                   edgecolors=colors[c], linewidths=0.7, alpha=0.85)
            note = "" if how == "UMAP" else " (PCA: too few points for UMAP)"
            ax.set_title(name + note)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel(f"{how} 1"), ax.set_ylabel(f"{how} 2")
            ax.grid(False)
        from matplotlib.lines import Line2D
        present = sorted(set().union(*(set(v[1].tolist()) for v in prepared.values())))
        handles = [Line2D([], [], marker="o", ls="none", color=colors[c], label=_name(class_names, c)) for c in present]
        kinds_present = list(dict.fromkeys(k for v in prepared.values() for k in v[2].tolist()))
        if len(kinds_present) > 1:
            handles += [Line2D([], [], marker=MARKERS.get(k, "s"), ls="none", color="black",
                               markerfacecolor="black" if k == "real" else "none", label=k) for k in kinds_present]
        fig.legend(handles=handles, loc="outside right center", title="class", ncols=2 if len(handles) > 14 else 1)
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


# --------------------------------------------------------------------------- one task at a glance

def task_overview(accuracy_matrix, images, image_labels, confusion, features, feature_labels, task: int,
                  tasks=None, class_names=None, denormalize=None, per_class: int = 4, seed: int = 0,
                  images_title: str | None = None, title: str | None = None, save=None) -> Figure:
    """A dashboard of one task: the accuracy matrix up to it, synthetic samples (one row of
    ``per_class`` per pseudo-class; ``images`` may be None), its confusion matrix and a 2-D
    embedding of test features coloured by class."""
    n = len(_np(confusion))
    colors = _class_colors(n)
    with style():
        fig = new_figure(10.0, 8.0)
        (ax_acc, ax_img), (ax_conf, ax_feat) = fig.subplots(2, 2)
        im = _matrix_panel(ax_acc, accuracy_matrix, True)
        ax_acc.set_title(f"accuracy matrix up to task {task}")
        fig.colorbar(im, ax=ax_acc, shrink=0.7, label="accuracy (%)")
        ax_img.grid(False), ax_img.set_xticks([]), ax_img.set_yticks([])
        for spine in ax_img.spines.values():
            spine.set_visible(False)
        if images is None or not len(images):
            ax_img.text(0.5, 0.5, "no synthetic samples\n(this method trains no generator)", ha="center",
                        va="center", transform=ax_img.transAxes, color="#666666")
            ax_img.set_title(images_title or "synthetic samples")
        else:
            x, y = to_display(images, denormalize), _np(image_labels).astype(int)
            classes = sorted(set(y.tolist()))
            strips = [_strip(x[y == c], per_class) for c in classes]
            gap = np.ones((1,) + strips[0].shape[1:])
            mosaic = np.concatenate([s for st in strips for s in (st, gap)][:-1])
            ax_img.imshow(mosaic.squeeze(-1) if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=1)
            h = strips[0].shape[0] + 1
            ax_img.set_yticks([i * h + h / 2 - 1 for i in range(len(classes))],
                              [_name(class_names, c) for c in classes], fontsize=8)
            ax_img.set_ylabel("pseudo-label")
            ax_img.tick_params(length=0)
            ax_img.set_title(images_title or f"synthetic samples after task {task}")
        imc, accuracy = _confusion_panel(ax_conf, confusion, tasks, class_names, n <= 10)
        ax_conf.set_title(f"confusion after task {task} ({accuracy:.1f} %)")
        embedding, how = embed_2d(features, seed)
        labels = _np(feature_labels).astype(int)
        for c in np.unique(labels):
            chosen = labels == c
            ax_feat.scatter(embedding[chosen, 0], embedding[chosen, 1], s=7, color=colors[c], label=_name(class_names, c))
        ax_feat.set_xticks([]), ax_feat.set_yticks([]), ax_feat.grid(False)
        ax_feat.set_title(f"{how} of test features, model after task {task}")
        ax_feat.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5, handletextpad=0.1, title="class")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


# --------------------------------------------------------------------------- the frozen-feature families

def _ellipse(ax, mean, cov, n_std: float, color):
    """The ``n_std`` contour of a 2-D Gaussian (``mean`` (2,), ``cov`` (2, 2)) as a patch."""
    from matplotlib.patches import Ellipse
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0, None)
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
    ax.add_patch(Ellipse(mean, 2 * n_std * np.sqrt(values[1]), 2 * n_std * np.sqrt(values[0]), angle=angle,
                         facecolor="none", edgecolor=color, lw=1.4))


def class_ellipses(stats: Mapping[str, object], class_names=None, marked=None, marked_label: str = "marked",
                   n_std: float = 2.0, title: str | None = None, save=None) -> Figure:
    """Points, class means (crosses) and ``n_std`` covariance ellipses in a 2-D projection, as
    :func:`rdfcil.analysis.pca_class_statistics` returns them (``points`` (N, 2), ``labels``,
    ``means`` (C, 2), ``covs`` (C, 2, 2), ``explained`` (2,)). ``marked``: further points
    (M, 2) on the same axes, ringed in black (e.g. the test images on which two classifiers
    disagree, ``stats["others"][index]``)."""
    points, labels = _np(stats["points"]), _np(stats["labels"]).astype(int)
    means, covs = _np(stats["means"]), _np(stats["covs"])
    explained = _np(stats.get("explained", [np.nan, np.nan]))
    colors = _class_colors(len(means))
    with style():
        fig = new_figure(6.2, 4.6)
        ax = fig.subplots()
        for c in range(len(means)):
            chosen = labels == c
            ax.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colors[c], alpha=0.35, linewidths=0)
            _ellipse(ax, means[c], covs[c], n_std, colors[c])
            ax.plot(*means[c], marker="X", ms=9, color=colors[c], mec="black", mew=0.7, ls="none",
                    label=_name(class_names, c))
        if marked is not None and len(_np(marked)):
            m = _np(marked).reshape(-1, 2)
            ax.scatter(m[:, 0], m[:, 1], s=30, facecolors="none", edgecolors="black", linewidths=0.8,
                       label=marked_label)
        ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f} % of the variance)")
        ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f} % of the variance)")
        ax.set_aspect("equal", adjustable="datalim")
        fig.legend(loc="outside right center", title="class mean", ncols=1)
        ax.set_title(title or f"class means and {n_std:g}-sigma covariance ellipses (PCA of the features)")
    return _finish(fig, save)


def prediction_grid(images, labels, predictions: Mapping[str, object], class_names=None, denormalize=None,
                    columns: int = 8, limit: int = 32, title: str | None = None, save=None) -> Figure:
    """Up to ``limit`` images (N, C, H, W), ``columns`` a row, each titled with its true label and
    every classifier's prediction (``{"NCM": (N,), "FeCAM": (N,)}``) below it; a correct
    prediction is green, a wrong one red. One mosaic in one axes (fast to draw however many
    images). An empty set of images gives a figure that says so."""
    shown = to_display(images[:limit], denormalize) if len(images) else np.zeros((0, 8, 8, 1))
    y = _np(labels).astype(int)
    preds = {k: _np(v).astype(int) for k, v in predictions.items()}
    h, w, channels = shown.shape[1:]
    rows, cols = max(1, math.ceil(len(shown) / columns)), columns
    unit = (w + 2) / 1.0  # mosaic pixels per inch: a tile and its margin are 1 inch wide
    line = 0.17 * unit  # one line of text, in mosaic pixels
    cell_h = h + (1 + len(preds)) * line + 2
    mosaic = np.ones((math.ceil(rows * cell_h), cols * (w + 2), channels))
    with style():
        fig = new_figure(cols * 1.0, 0.4 + rows * cell_h / unit)
        ax = fig.subplots()
        ax.axis("off")
        for i, image in enumerate(shown):
            top, left = int((i // cols) * cell_h + line), (i % cols) * (w + 2) + 1
            mosaic[top:top + h, left:left + w] = image
        ax.imshow(mosaic.squeeze(-1) if channels == 1 else mosaic, cmap="gray", vmin=0, vmax=1,
                  extent=(0, mosaic.shape[1], mosaic.shape[0], 0))
        for i in range(len(shown)):
            top, centre = int((i // cols) * cell_h + line), (i % cols) * (w + 2) + 1 + w / 2
            ax.text(centre, top - 0.15 * line, f"true {_name(class_names, y[i])}", ha="center", va="bottom", fontsize=7)
            for j, (name, p) in enumerate(preds.items()):
                ax.text(centre, top + h + (j + 0.15) * line, f"{name} {_name(class_names, p[i])}", ha="center",
                        va="top", fontsize=7, color="#228833" if p[i] == y[i] else "#EE6677")
        if not len(shown):
            ax.text(0.5, 0.5, "no disagreement", transform=ax.transAxes, ha="center", va="center")
        if title:
            fig.suptitle(title)
    return _finish(fig, save)


def split_accuracy(results: Mapping[int, Mapping[str, Sequence]], num_classes: int | None = None,
                   title: str | None = None, save=None) -> Figure:
    """Accuracy on the seen classes after each task against the number of classes seen, one
    curve per number of incremental tasks ``T`` (``{T: {"seen": [...], "accuracy": [...]}}``, as
    :func:`rdfcil.analysis.analytic_over_splits` returns); the final accuracy in the legend."""
    with style():
        fig = new_figure(5.2, 3.3)
        ax = fig.subplots()
        markers = "osD^v<>"
        for i, (T, r) in enumerate(results.items()):
            ax.plot(r["seen"], r["accuracy"], marker=markers[i % len(markers)], ms=7 - 1.5 * i, alpha=0.85,
                    label=f"{T} incremental task{'s' if T != 1 else ''}: final {r['accuracy'][-1]:.2f} %")
        ax.set_xlabel("classes seen")
        ax.set_ylabel("accuracy on the seen classes (%)")
        if num_classes:
            ax.set_xlim(0, num_classes + 0.5)
        ax.legend(loc="lower left")
        ax.set_title(title or "the analytic head after the same base task, split into T incremental tasks")
    return _finish(fig, save)


# --------------------------------------------------------------------------- the families side by side

# A colour per family (``tables.FAMILIES``); the methods of a family differ by marker and line style.
FAMILY_COLORS = {"bound": "#777777", "inversion": "#4477AA", "statistics": "#228833", "analytic": "#AA3377",
                 "drift": "#EE6677", "other": "#000000"}
_MARKERS, _DASHES = "osD^vP<>", ("-", "--", ":", "-.")


def families_vs_tasks(rows: Sequence[Mapping], title: str | None = None, save=None) -> Figure:
    """Final and average incremental accuracy (two panels) against the number of tasks: a line per
    method (per classifier where a method has several) with a ± std bar over its runs, coloured by
    family (:data:`FAMILY_COLORS`), methods of one family told apart by marker and line style;
    published numbers, where the rows carry them, as hollow markers of the method's. ``rows``:
    :func:`rdfcil.tables.family_rows` (one dataset, one kind of split)."""
    from .tables import FAMILIES
    lines: dict = {}
    for r in rows:
        lines.setdefault((r["method"], r.get("classifier") or "linear head"), []).append(r)
    order = list(FAMILIES) + ["other"]
    keys = sorted(lines, key=lambda k: (order.index(lines[k][0]["family"]) if lines[k][0]["family"] in order
                                        else len(order), method_rank(k[0]), k))
    several = {m for m, _ in keys if sum(1 for n, _ in keys if n == m) > 1}
    rank_in_family: dict = {}
    counts = sorted({r["num_tasks"] for r in rows})
    with style():
        fig = new_figure(8.4, 3.2)
        axes = fig.subplots(1, 2)
        published_shown = False
        for method, classifier in keys:
            points = sorted(lines[(method, classifier)], key=lambda r: r["num_tasks"])
            family = points[0]["family"]
            i = rank_in_family.setdefault(family, {}).setdefault((method, classifier), len(rank_in_family[family]))
            color, marker, dash = FAMILY_COLORS.get(family, "#000000"), _MARKERS[i % 8], _DASHES[i % 4]
            label = method_label(method) + (f" ({classifier})" if method in several else "") + f" · {family}"
            x = [r["num_tasks"] for r in points]
            for ax, (mean, std, paper) in zip(axes, (("final_mean", "final_std", "paper_last"),
                                                     ("avg_mean", "avg_std", "paper_avg"))):
                ax.errorbar(x, [r[mean] for r in points], yerr=[r[std] or 0 for r in points], color=color,
                            marker=marker, ls=dash, capsize=2, label=label, gid=f"{method}|{classifier}|{family}")
                published_points = [(r["num_tasks"], r[paper]) for r in points if r.get(paper) is not None]
                if published_points:
                    px, py = zip(*published_points)
                    ax.plot(px, py, marker=marker, ms=8, mfc="white", mec=color, mew=1.3, ls="none",
                            gid=f"published|{method}|{classifier}")
                    published_shown = True
        for ax, name in zip(axes, ("final accuracy (%)", "average incremental accuracy (%)")):
            ax.set_xlabel("number of tasks")
            ax.set_ylabel(name)
            ax.set_xticks(counts)
            ax.set_ylim(0, 102)
        handles, labels = axes[0].get_legend_handles_labels()
        if published_shown:
            from matplotlib.lines import Line2D
            handles.append(Line2D([], [], marker="o", ms=8, mfc="white", mec="grey", ls="none"))
            labels.append("published (hollow)")
        fig.legend(handles, labels, loc="outside right center")
        dataset = rows[0]["dataset"] if rows else ""
        fig.suptitle(title or f"{dataset}, {rows[0].get('split_kind', 'one split') if rows else ''}: "
                              "the families against the number of tasks")
    return _finish(fig, save)
