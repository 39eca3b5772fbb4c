"""Published numbers to reproduce (docs/methods/inversion.md, "Published results") and the default plan of ``reproduce.ipynb``.

All accuracies are in percent. "last" is the final accuracy ``A_T``, "avg" the average
incremental accuracy ``mean(A_1..A_T)``; ``None`` where the paper gives no value.

* Half-base splits (R-DFCIL paper, ResNet-32): a base task of half the classes (50 for
  CIFAR-100, 100 for Tiny-ImageNet-200) then 5, 10 or 25 equal tasks, i.e. ``num_tasks`` 6, 11, 26.
  CIFAR-100 "last" carries a standard deviation over runs; Tiny-ImageNet does not.
* Equal splits of CIFAR-100 into 5, 10 or 20 tasks (as published for ABD, 3 runs, final accuracy
  only); the upper bound (joint training) is 69.9 whatever the split.
"""

from __future__ import annotations

import yaml

from .errors import RdfcilError

R_DFCIL = "R-DFCIL (Gao et al., ECCV 2022), half-base table"
ABD_PAPER = "ABD (Smith et al., ICCV 2021), equal splits, 3 runs"

# (dataset, first_task_classes, num_tasks, method) -> numbers
PUBLISHED: dict[tuple, dict] = {
    # CIFAR-100, 50 base classes + 5 / 10 / 25 steps
    ("cifar100", 50, 6, "abd"): {"avg": 62.40, "last": 50.55, "last_std": 1.14},
    ("cifar100", 50, 6, "rdfcil"): {"avg": 64.78, "last": 54.76, "last_std": 0.76},
    ("cifar100", 50, 11, "abd"): {"avg": 58.97, "last": 43.65, "last_std": 2.40},
    ("cifar100", 50, 11, "rdfcil"): {"avg": 61.71, "last": 49.70, "last_std": 0.61},
    ("cifar100", 50, 26, "abd"): {"avg": 48.91, "last": 25.27, "last_std": 1.09},
    ("cifar100", 50, 26, "rdfcil"): {"avg": 49.95, "last": 30.01, "last_std": 0.56},
    # Tiny-ImageNet-200, 100 base classes + 5 / 10 / 25 steps
    ("tiny-imagenet200", 100, 6, "abd"): {"avg": 44.55, "last": 33.18, "last_std": None},
    ("tiny-imagenet200", 100, 6, "rdfcil"): {"avg": 48.91, "last": 40.44, "last_std": None},
    ("tiny-imagenet200", 100, 11, "abd"): {"avg": 41.64, "last": 27.34, "last_std": None},
    ("tiny-imagenet200", 100, 11, "rdfcil"): {"avg": 47.60, "last": 38.19, "last_std": None},
    ("tiny-imagenet200", 100, 26, "abd"): {"avg": 34.47, "last": 16.46, "last_std": None},
    ("tiny-imagenet200", 100, 26, "rdfcil"): {"avg": 40.85, "last": 27.29, "last_std": None},
}
for _key in PUBLISHED:
    PUBLISHED[_key]["source"] = R_DFCIL

# CIFAR-100 equal splits, final accuracy only: method -> {num_tasks: last}
EQUAL_SPLITS_CIFAR100 = {
    "joint": {5: 69.9, 10: 69.9, 20: 69.9},
    "finetune": {5: 16.4, 10: 8.8, 20: 4.4},
    "lwf": {5: 17.0, 10: 9.2, 20: 4.7},
    "deepinversion": {5: 18.8, 10: 10.9, 20: 5.7},
    "abd": {5: 43.9, 10: 33.7, 20: 20.0},
}
for _method, _values in EQUAL_SPLITS_CIFAR100.items():
    for _tasks, _last in _values.items():
        PUBLISHED[("cifar100", None, _tasks, _method)] = {"avg": None, "last": _last, "last_std": None,
                                                         "source": ABD_PAPER}

# The frozen-backbone methods (docs/methods/statistics.md), CIFAR-100. Each record names
# the classifier that made the prediction (a method's ``classifier``; FeTrIL has two) and, in
# ``protocol``, how its setting differs from the lab's (ResNet-32, the same split): None only
# where it does not. Average incremental accuracy ("avg") unless "last" is given.
FECAM_POSTER = "FeCAM (Goswami et al., NeurIPS 2023), table of dipamgoswami/FeCAM figs/FeCAM_poster.png"
FETRIL_README = "FeTrIL (Petit et al., WACV 2023), GregoirePetit/FeTrIL README table"
PYCIL_FETRIL = "PyCIL's reproduction of FeTrIL (LAMDA-CL/PyCIL models/fetril.py docstring)"
NCM_CLASSIFIER, FECAM_CLASSIFIER = "NCM (L2-normalised features)", "FeCAM (Mahalanobis)"
SVM_CLASSIFIER, FC_CLASSIFIER = "LinearSVC (FeTrIL)", "fc head on features (FeTrIL)"
RESNET18 = "ResNet-18 backbone (the lab: ResNet-32)"
FETRIL_RESNET18 = "LUCIR ResNet-18 at 224 pixels with an AugMix fine-tune (the lab: ResNet-32)"


def _record(method, classifier, first, tasks, avg, source, protocol, last=None):
    return dict(dataset="cifar100", method=method, classifier=classifier, first_task_classes=first,
                num_tasks=tasks, avg=avg, last=last, last_std=None, source=source, protocol=protocol)


BEYOND: list[dict] = [
    _record("ncm", NCM_CLASSIFIER, 50, 6, 64.8, FECAM_POSTER + " (Euclidean NCM)", RESNET18),
    _record("ncm", NCM_CLASSIFIER, 50, 11, 64.6, FECAM_POSTER + " (Euclidean NCM)", RESNET18),
    _record("fecam", FECAM_CLASSIFIER, 50, 6, 70.9, FECAM_POSTER + "; last: the paper's Table 3, second-hand",
            RESNET18, last=62.1),
    _record("fecam", FECAM_CLASSIFIER, 50, 11, 70.8, FECAM_POSTER, RESNET18),
    {**_record("fecam", FECAM_CLASSIFIER, None, 10, 52.53, "EFC++ (arXiv 2503.10439) Table 2, second-hand",
               "cold start (10 equal tasks), ResNet-18, EFC++'s re-run", last=37.63), "setting": "cold-start"},
    {**_record("fecam", FECAM_CLASSIFIER, None, 10, 48.3, "AdaGauss (NeurIPS 2024) Table 1, second-hand",
               "cold start (10 equal tasks), ResNet-18, AdaGauss's re-run", last=32.4), "setting": "cold-start"},
    _record("fetril", SVM_CLASSIFIER, 50, 6, 65.38, PYCIL_FETRIL + ", SVM", None),
    _record("fetril", SVM_CLASSIFIER, 50, 11, 65.10, PYCIL_FETRIL + ", SVM", None),
    _record("fetril", SVM_CLASSIFIER, 40, 61, 61.72, PYCIL_FETRIL + ", SVM", None),
    _record("fetril", SVM_CLASSIFIER, 50, 6, 66.3, FETRIL_README, FETRIL_RESNET18),
    _record("fetril", SVM_CLASSIFIER, 50, 11, 65.2, FETRIL_README, FETRIL_RESNET18),
    _record("fetril", SVM_CLASSIFIER, 40, 21, 61.5, FETRIL_README, FETRIL_RESNET18),
    _record("fetril", SVM_CLASSIFIER, 40, 61, 59.8, FETRIL_README, FETRIL_RESNET18),
    _record("fetril", SVM_CLASSIFIER, 50, 6, 67.6, FECAM_POSTER + " (FeTrIL*, FeCAM's re-run)", RESNET18),
    _record("fetril", SVM_CLASSIFIER, 50, 11, 66.6, FECAM_POSTER + " (FeTrIL*, FeCAM's re-run)", RESNET18),
    _record("fetril", FC_CLASSIFIER, 50, 6, 65.78, PYCIL_FETRIL + ", FC", None),
    _record("fetril", FC_CLASSIFIER, 50, 11, 64.91, PYCIL_FETRIL + ", FC", None),
    _record("fetril", FC_CLASSIFIER, 40, 61, 62.09, PYCIL_FETRIL + ", FC", None),
    _record("fetril", FC_CLASSIFIER, 50, 6, 64.7, FETRIL_README + " (FeTrIL^fc)", FETRIL_RESNET18),
    _record("fetril", FC_CLASSIFIER, 50, 11, 63.4, FETRIL_README + " (FeTrIL^fc)", FETRIL_RESNET18),
    _record("fetril", FC_CLASSIFIER, 40, 21, 57.4, FETRIL_README + " (FeTrIL^fc)", FETRIL_RESNET18),
    _record("fetril", FC_CLASSIFIER, 40, 61, 50.8, FETRIL_README + " (FeTrIL^fc)", FETRIL_RESNET18),
]


# Analytic learning (docs/methods/analytic.md), CIFAR-100, ResNet-32, 50 base classes: the
# papers (the authors' class orders; no "last" for ACIL), the authors' README (another base
# schedule) and cold-start re-runs by later papers.
ACIL_PAPER = "ACIL (Zhuang et al., NeurIPS 2022), paper table, second-hand"
DSAL_PAPER = "DS-AL (Zhuang et al., AAAI 2024), paper table, second-hand"
ANALYTIC_README = "ZHUANGHP/Analytic-continual-learning README table (mean +- std)"
ANALYTIC_CLASSIFIER, DUAL_STREAM_CLASSIFIER = "analytic (RLS)", "analytic, dual stream (RLS)"
ANALYTIC_REPO_PROTOCOL = ("the authors' repository's base schedule (300 epochs, cosine lr 0.5, TrivialAugmentWide), "
                          "which its README says gives 2-5 points more than the papers")
BEYOND += [
    _record("acil", ANALYTIC_CLASSIFIER, 50, 6, 66.30, ACIL_PAPER, None),
    _record("acil", ANALYTIC_CLASSIFIER, 50, 26, 65.95, ACIL_PAPER, None),
    _record("dsal", DUAL_STREAM_CLASSIFIER, 50, 51, 66.33, DSAL_PAPER, None, last=58.37),
    {**_record("acil", ANALYTIC_CLASSIFIER, 50, 26, 71.047, ANALYTIC_README, ANALYTIC_REPO_PROTOCOL, last=63.384),
     "avg_std": 0.252, "last_std": 0.330},
    {**_record("dsal", DUAL_STREAM_CLASSIFIER, 50, 26, 71.277, ANALYTIC_README, ANALYTIC_REPO_PROTOCOL,
               last=64.043), "avg_std": 0.251, "last_std": 0.184},
    {**_record("acil", ANALYTIC_CLASSIFIER, None, 10, 50.53, "DPCR (ICML 2025) Table 1, second-hand",
               "cold start (10 equal tasks), DPCR's re-run (its backbone and schedule)", last=35.53),
     "setting": "cold-start"},
    {**_record("dsal", DUAL_STREAM_CLASSIFIER, None, 10, 51.47, "DPCR (ICML 2025) Table 1, second-hand",
               "cold start (10 equal tasks), DPCR's re-run (its backbone and schedule)", last=36.83),
     "setting": "cold-start"},
    {**_record("dsal", DUAL_STREAM_CLASSIFIER, None, 10, 54.9, "AdaGauss (NeurIPS 2024) Table 1, second-hand",
               "cold start (10 equal tasks), AdaGauss's re-run (its backbone and schedule)", last=40.8),
     "setting": "cold-start"},
]


# The cold-start protocol (CIFAR-100 in 10 equal tasks, trained from scratch), where the exemplar-free
# methods of 2024-25 are compared: last and average incremental accuracy as their papers give them,
# every one second-hand (copied from the papers' tables). ``setting`` "cold-start" puts a record
# first in a cold-start table (``published(..., protocol="cold-start")``); ``classifier`` None: the
# method's own. Methods are keyed by their registry names, whether registered yet or not:
# "efc", "efcpp" (EFC, EFC++), "ldc", "adc" (LwF + LDC, LwF + ADC), "lwfncm" (LDC's baseline: the
# authors' LwF with a cosine head, classified by NCM on the prototypes).
EFCPP_TABLE2 = "EFC++ (Magistri et al., arXiv 2503.10439) Table 2, second-hand"
EFC_TABLE1 = "EFC (Magistri et al., ICLR 2024) Table 1, second-hand"
LDC_TABLE1 = "LDC (Gomez-Villa et al., ECCV 2024) Table 1, 5 seeds, second-hand"
DPCR_TABLE1 = "DPCR (ICML 2025) Table 1, second-hand"
COLD_EFC = "cold start (10 equal tasks), ResNet-18, the EFC code's schedule (Adam, self-rotation) and class order"
COLD_EFCPP_RERUN = "cold start (10 equal tasks), ResNet-18, EFC++'s re-run"
COLD_LDC = "cold start (10 equal tasks), ResNet-18, the LDC code's LwF schedule (SGD, AutoAugment)"
COLD_DPCR = "cold start (10 equal tasks), DPCR's re-run (its backbone and schedule)"


def _cold(method, classifier, tasks, last, avg, source, protocol):
    return {**_record(method, classifier, None, tasks, avg, source, protocol, last=last), "setting": "cold-start"}


BEYOND += [
    _cold("rdfcil", None, 10, 42.14, 57.77, EFCPP_TABLE2, COLD_EFCPP_RERUN),
    _cold("abd", None, 10, 43.11, 59.14, EFCPP_TABLE2, COLD_EFCPP_RERUN),
    _cold("efcpp", None, 10, 47.52, 61.57, EFCPP_TABLE2, COLD_EFC),
    _cold("efc", None, 10, 43.62, 58.58, EFC_TABLE1, COLD_EFC),
    _cold("fetril", SVM_CLASSIFIER, 10, 34.94, 51.20, EFC_TABLE1 + " (EFC's re-run; its classifier not stated, "
          "FeTrIL's LinearSVC assumed)", "cold start (10 equal tasks), ResNet-18, EFC's re-run"),
    _cold("lwfncm", None, 10, 40.5, 56.2, LDC_TABLE1 + " (LwF + NCM)", COLD_LDC),
    _cold("ldc", None, 10, 45.4, 59.5, LDC_TABLE1 + " (LwF + LDC)", COLD_LDC),
    _cold("adc", None, 10, 46.80, 62.05, DPCR_TABLE1 + " (LwF + ADC)", COLD_DPCR),
]


def _split(dataset: str, num_tasks: int, first_task_classes: int | None) -> int | None:
    """``first_task_classes`` with an equal split written as None."""
    from .data import SPECS
    total = SPECS[dataset].num_classes if dataset in SPECS else None
    if first_task_classes is not None and total and first_task_classes * num_tasks == total:
        return None
    return first_task_classes


def published_records(dataset: str, method: str, num_tasks: int, first_task_classes: int | None = None,
                      classifier: str | None = None) -> list[dict]:
    """Every published record of the frozen-backbone methods for a setting (several sources),
    the lab's protocol first; ``classifier`` keeps only that classifier's."""
    first = _split(dataset, num_tasks, first_task_classes)
    found = [dict(r) for r in BEYOND if (r["dataset"], r["method"], r["num_tasks"], r["first_task_classes"]) ==
             (dataset, method, num_tasks, first) and (r["classifier"] is None or classifier in (None, r["classifier"]))]
    return sorted(found, key=lambda r: r["protocol"] is not None)


def published(dataset: str, method: str, num_tasks: int, first_task_classes: int | None = None,
              classifier: str | None = None, protocol: str = "half-base") -> dict | None:
    """The published ``{"avg", "last", "last_std", "source"}`` of a setting, or None; for the
    frozen-backbone methods also ``classifier`` and ``protocol`` (None: the lab's protocol;
    otherwise how it differs), the lab's protocol preferred (:data:`BEYOND`).

    ``first_task_classes`` None (or the equal share ``classes / num_tasks``) means an equal split.
    ``classifier``: only a number that this classifier made (FeTrIL's LinearSVC or fc head).
    ``protocol`` "cold-start" (the runs of ``plan(..., protocol="cold-start")``): the cold-start
    records first (``setting``), and a number of the lab's own setting (ResNet-32, the method's
    schedule) marked as another setting where the cold-start plan changes the backbone and schedule.
    """
    check_protocol(protocol)
    first = _split(dataset, num_tasks, first_task_classes)
    if protocol == "cold-start":
        cold = [r for r in published_records(dataset, method, num_tasks, first, classifier)
                if r.get("setting") == "cold-start"]
        if cold:
            return {k: cold[0][k] for k in ("avg", "last", "last_std", "source", "classifier", "protocol")}
        found = published(dataset, method, num_tasks, first, classifier)
        if found and not found.get("protocol") and COLD_START.get(dataset, {}).get("overrides"):
            found["protocol"] = COLD_START_ELSEWHERE
        return found
    found = PUBLISHED.get((dataset, first, num_tasks, method))
    if found:
        return dict(found)
    records = published_records(dataset, method, num_tasks, first, classifier)
    if not records:
        return None
    return {k: records[0][k] for k in ("avg", "last", "last_std", "source", "classifier", "protocol")}


def published_in(protocol: str):
    """:func:`published` for the runs of ``protocol`` (half-base or cold-start), as
    ``tables.summary_rows`` and ``viz.accuracy_curves`` call it: ``(dataset, method, num_tasks,
    first_task_classes, classifier=None)``."""
    import functools
    check_protocol(protocol)
    return functools.partial(published, protocol=protocol)


# --------------------------------------------------------------------------- notebook parameters

def parse_param(name: str, value, kind: type = list, item: type | None = None):
    """A list or dict notebook parameter as users pass it, checked.

    ``papermill -p seeds '[0, 1]'`` hands the notebook the string ``"[0, 1]"`` (``-p`` keeps
    only numbers, booleans and None); ``-y``, ``-f params.yaml`` and Python hand it the list.
    Both are accepted: a string is read as YAML (JSON is YAML). For ``kind=list`` a single
    value stands for a list of one (``-p seeds 3``); ``item`` checks the entries' type. None
    (or the strings ``None``/``null``) stays None. Anything else stops with a one-line
    :class:`RdfcilError` that names the parameter.
    """
    wanted = {list: "a list, e.g. [0, 1]", dict: "a mapping, e.g. {epochs: 2}"}[kind]
    if isinstance(value, str):
        text = value.strip()
        if text in ("None", "none", "null", "~", ""):
            return None
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).strip().splitlines()[0]
            raise RdfcilError(f"parameter {name} must be {wanted}; cannot read {text!r} ({first})") from None
    if value is None:
        return None
    if kind is list:
        if isinstance(value, tuple):
            value = list(value)
        elif not isinstance(value, (list, dict)):
            value = [value]
    if not isinstance(value, kind):
        raise RdfcilError(f"parameter {name} must be {wanted}, got {value!r}")
    if item is not None and kind is list:
        bad = [v for v in value if not isinstance(v, item) or isinstance(v, bool) and item is not bool]
        if bad:
            raise RdfcilError(f"parameter {name} must be a list of {item.__name__} values, got {value!r}")
    return value


# --------------------------------------------------------------------------- reproduce.ipynb defaults

# What ``reproduce.ipynb`` runs when its parameters are left at None. The digits and
# Fashion-MNIST plans fit a CPU budget of a few minutes; the paper datasets run the published
# half-base protocol, repeated as published: over the three class orders of
# ``class_orders.json`` at seed 1. R-DFCIL's config/cifar100.yaml lists these three orders ("used
# by ABD and our R-DFCIL") with ``seed_everything: 1``; ABD's trainer (``--rand_split``) draws
# repeat r's order with ``random.seed(r); random.shuffle(range(C))``, which gives exactly these
# orders for CIFAR-100 and Tiny-ImageNet-200 (ImageNet-100: one order, ``np.random.seed(1993)``).
# The official R-DFCIL Makefile's default run is not half-base: its configs set
# ``init_task_splits: 0`` and ``num_tasks: 10``, ten equal tasks; the paper's tables are half-base.
# ``class_orders`` and ``seeds`` can be given together: every order x seed is run.
DEFAULTS = {
    "digits": {
        "methods": ["finetune", "lwf", "rdfcil", "joint"], "task_counts": [5], "seeds": [0],
        "first_task_classes": None, "preset": "quick",
        # A lighter budget than the quick preset (a 30-epoch schedule, 200 inversion steps), with
        # the incremental lr 0.05 that short schedules need (docs/methods/inversion.md, "Small budgets").
        # One thread, so that the committed demo table is what any machine of the kind gives.
        "overrides": {"epochs": 30, "refinement_epochs": 8, "milestones": [15], "inversion_steps": 200,
                      "lr_incremental": 0.05, "threads": 1},
    },
    "fashion-mnist": {
        "methods": ["finetune", "lwf", "rdfcil", "joint"], "task_counts": [5], "seeds": [0],
        "first_task_classes": None, "preset": "quick", "overrides": {},
    },
    "cifar100": {
        "methods": ["abd", "rdfcil"], "task_counts": [6, 11, 26], "seeds": [1], "class_orders": [0, 1, 2],
        "first_task_classes": 50, "preset": "paper", "overrides": {},
    },
    "tiny-imagenet200": {
        "methods": ["abd", "rdfcil"], "task_counts": [6, 11, 26], "seeds": [1], "class_orders": [0, 1, 2],
        "first_task_classes": 100, "preset": "paper", "overrides": {},
    },
    "imagenet100": {
        "methods": ["rdfcil"], "task_counts": [10], "seeds": [1],
        "first_task_classes": None, "preset": "paper", "overrides": {},
    },
}


# --------------------------------------------------------------------------- protocols

# "half-base": the plans above (R-DFCIL's tables: half the classes in the first task on the paper
# datasets). "cold-start": equal tasks from scratch, where the exemplar-free methods of 2024-25
# are compared (EFC, EFC++, LDC, ADC): CIFAR-100 in 10 and 20 tasks with the backbone and
# schedule of that comparison (:data:`COLD_START_CIFAR100`), digits and Fashion-MNIST in 5 equal
# tasks (their half-base plans already are), the ImageNet-style datasets in 10 and 20 equal tasks
# at their paper preset (the EFC code's scripts run these counts; its backbone and schedule are
# expressed for CIFAR-100 only).
PROTOCOLS = ("half-base", "cold-start")

# The EFC / EFC++ code's CIFAR-100 setting (simomagi/elastic_feature_consolidation,
# utilities/parse_utils.py, continual_learning/utils/OptimizerManager.py, models/resnet18.py,
# dataset/dataset_utils.py, scripts/experiments_efcplus.sh), in which EFC++'s Table 2 compares
# R-DFCIL, ABD, FeCAM, EFC and EFC++: what the lab's keys express.
COLD_START_CIFAR100 = dict(backbone="resnet18", resnet_variant="standard", epochs=100, milestones=[45, 90],
                           batch_size=64, weight_decay=2e-4)
COLD_START_NOTES = (
    "cold start: the EFC / EFC++ code's CIFAR-100 setting (utilities/parse_utils.py, utils/OptimizerManager.py): "
    "equal tasks from scratch; its ResNet-18 with a 3x3 stride-1 stem, no max-pool, a ReLU after every addition "
    "and 1x1-conv shortcuts (backbone resnet18, resnet_variant standard), 100 epochs per task, batch 64, weight "
    "decay 2e-4, lr milestones 45 and 90. Not expressible in the lab: its Adam (lr 1e-3 on the first task, a "
    "constant 1e-4 on the others; each method keeps its own optimiser and learning rates here), the self-rotation "
    "auxiliary head of the first task, BatchNorm frozen in the incremental tasks (where a method does not freeze "
    "it itself), Pad(4) + RandomResizedCrop(32) augmentation (the lab's padded random crop), and the class order "
    "that its code draws from the seed (random.shuffle; the lab's published orders here). How EFC++ re-ran "
    "R-DFCIL, ABD and FeCAM beyond backbone and split is not in the lab's sources: each keeps its paper values "
    "for every other key (refinement epochs included)")
# A published number of the lab's own setting, shown in a cold-start table.
COLD_START_ELSEWHERE = "the paper's own equal split (ResNet-32 and the method's published schedule)"

COLD_START = {
    "digits": {"task_counts": [5]},
    "fashion-mnist": {"task_counts": [5]},
    "cifar100": {"task_counts": [10, 20], "seeds": [1], "class_orders": [0, 1, 2], "preset": "paper",
                 "overrides": COLD_START_CIFAR100, "notes": COLD_START_NOTES, "tag": "cold"},
    "tiny-imagenet200": {"task_counts": [10, 20], "seeds": [1], "class_orders": [0, 1, 2], "preset": "paper"},
    "imagenet100": {"task_counts": [10, 20], "seeds": [1], "preset": "paper"},
}


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a one-line :class:`RdfcilError`."""
    if protocol not in PROTOCOLS:
        raise RdfcilError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return protocol


def cold_start_methods() -> list[str]:
    """The registered methods with a published cold-start number (:data:`BEYOND`), in registry order."""
    from .config import method_names
    cold = {r["method"] for r in BEYOND if r.get("setting") == "cold-start"}
    return [m for m in method_names() if m in cold]


def protocol_values(dataset: str, protocol: str) -> dict:
    """What ``protocol`` sets on top of a run's preset: ``overrides`` (config keys), ``notes`` (added
    to the preset's notes) and ``tag`` (in the run folder's name); empty for half-base."""
    check_protocol(protocol)
    plan_ = COLD_START.get(dataset, {}) if protocol == "cold-start" else {}
    return {"overrides": dict(plan_.get("overrides", {})), "notes": plan_.get("notes", ""), "tag": plan_.get("tag", "")}


def defaults(dataset: str, protocol: str = "half-base") -> dict:
    """A copy of the default reproduction plan of ``dataset`` (see :data:`DEFAULTS`); a dataset
    without one runs every method on an equal 5-task split, seed 0, at its default preset.
    ``protocol`` "cold-start": equal tasks (:data:`COLD_START`); on CIFAR-100 every registered method
    with a published cold-start number (:func:`cold_start_methods`)."""
    import copy
    from .config import method_names
    from .data import dataset_spec
    spec = dataset_spec(dataset)  # the one-line error for an unknown dataset
    generic = {"methods": list(method_names()), "task_counts": [5], "seeds": [0], "first_task_classes": None,
               "preset": spec.default_preset, "overrides": {}}
    plan_ = {"class_orders": [0], **copy.deepcopy(DEFAULTS.get(dataset, generic))}
    if check_protocol(protocol) == "cold-start":
        cold = COLD_START.get(dataset, {"task_counts": [10, 20]})
        plan_.update({k: copy.deepcopy(cold[k]) for k in ("task_counts", "seeds", "class_orders", "preset") if k in cold})
        plan_["first_task_classes"] = None
        if dataset == "cifar100":
            plan_["methods"] = cold_start_methods()
    return plan_


def plan(dataset: str, methods=None, task_counts=None, seeds=None, first_task_classes="default", preset=None,
         overrides=None, out_dir: str = "runs/notebooks", class_orders=None, protocol: str = "half-base",
         tag: str | None = None, **keys) -> list:
    """The validated configs of a reproduction: every task count x method x class order x seed.
    The repeats of the paper datasets' default plans are the published ones: class orders 0-2 at
    seed 1 (see :data:`DEFAULTS`); ``class_orders=[0]`` with ``seeds=[0, 1, 2]`` repeats over
    seeds instead.

    ``None`` (and ``first_task_classes="default"``) take the dataset's default from
    :data:`DEFAULTS`; ``first_task_classes=None`` is an equal split. ``keys`` are further
    config keys for every run (``data_root``, ``device``, ...). Each run folder is
    ``analysis.run_folder(out_dir, config, tag)``. Every config, split included, is checked before
    any run starts, so a wrong value stops with one line before anything is trained.

    ``protocol``: "half-base" (the default plans above) or "cold-start" (:data:`COLD_START`: equal
    tasks; on CIFAR-100 10 and 20 of them, every method with a published cold-start number, and the
    backbone and schedule of :data:`COLD_START_CIFAR100`, which ``overrides`` and ``keys`` can still
    change; its notes are added to each config's ``notes``). ``tag`` (default: the protocol's,
    ``cold`` on CIFAR-100) goes into the run folders' names.
    """
    from .analysis import project_path, run_folder
    from .config import resolve
    from .data import class_order, dataset_spec, task_sizes
    plan_ = defaults(dataset, protocol)
    extra = protocol_values(dataset, protocol)
    tag = extra["tag"] if tag is None else tag
    methods = parse_param("methods", methods, list, str)
    task_counts = parse_param("task_counts", task_counts, list, int)
    seeds = parse_param("seeds", seeds, list, int)
    class_orders = parse_param("class_orders", class_orders, list)
    overrides = parse_param("overrides", overrides, dict)
    first = plan_["first_task_classes"] if first_task_classes == "default" else first_task_classes
    budget = plan_["overrides"] if overrides is None else dict(overrides)
    if "data_root" in keys:
        keys["data_root"] = str(project_path(keys["data_root"]))
    configs = []
    for num_tasks in task_counts or plan_["task_counts"]:
        for method in methods or plan_["methods"]:
            for order in class_orders or plan_["class_orders"]:
                for seed in seeds or plan_["seeds"]:
                    config = resolve({**extra["overrides"], **budget, **keys, "dataset": dataset, "method": method,
                                      "num_tasks": num_tasks, "first_task_classes": first, "seed": seed,
                                      "class_order": order, "preset": preset or plan_["preset"]})
                    task_sizes(dataset_spec(dataset).num_classes, config.num_tasks, config.first_task_classes)
                    class_order(dataset, dataset_spec(dataset).num_classes, config.class_order)  # a valid order
                    if extra["notes"]:
                        config.notes = "; ".join(n for n in (config.notes, extra["notes"]) if n)
                    config.out = str(run_folder(out_dir, config, tag))
                    configs.append(config)
    return configs


def walkthrough(dataset: str, num_tasks: int, first_task_classes, seed: int, preset: str | None, overrides,
                data_root: str, device: str, out_dir: str, method: str = "rdfcil", tag: str = "", **keys):
    """The config of a walkthrough notebook's run (02-05): the dataset's default budget
    (:data:`DEFAULTS`) unless ``overrides`` is given, the run folder
    ``runs.run_folder(out_dir, config, tag)``, so that the notebooks share one run."""
    from .config import resolve
    from .runs import project_path, run_folder
    overrides = parse_param("overrides", overrides, dict)
    budget = defaults(dataset)["overrides"] if overrides is None else overrides
    config = resolve({**budget, **keys, "dataset": dataset, "method": method, "num_tasks": num_tasks,
                      "first_task_classes": first_task_classes, "seed": seed, "preset": preset,
                      "data_root": str(project_path(data_root)), "device": device})
    config.out = str(run_folder(out_dir, config, tag))
    return config


# --------------------------------------------------------------------------- departures from the paper

# Keys that describe the experiment rather than how it is run: never a departure.
PROTOCOL_KEYS = {"dataset", "method", "num_tasks", "first_task_classes", "class_order", "seed", "preset",
                 "out", "progress", "device", "num_workers", "eval_batch_size", "notes", "data_root", "threads"}


def paper_reference(dataset: str, method: str):
    """The published configuration a run of ``method`` on ``dataset`` is compared with: the
    paper preset of the dataset, or for a dataset without one (default preset ``quick``:
    digits, fashion-mnist) the CIFAR-100 paper preset (the published 32x32 setting)."""
    from .config import resolve
    from .data import dataset_spec
    has_paper = dataset_spec(dataset).default_preset == "paper"
    return resolve({"dataset": dataset if has_paper else "cifar100", "method": method,
                    "preset": "paper"})


def departures(config) -> dict[str, tuple]:
    """``{key: (value in config, published value)}`` for every key that ``config``'s method reads
    and in which it differs from :func:`paper_reference` (protocol keys aside)."""
    from .methods import unused_keys
    reference = paper_reference(config.dataset, config.method).to_dict()
    ignored = PROTOCOL_KEYS | unused_keys(config.method)
    return {k: (v, reference[k]) for k, v in config.to_dict().items() if k not in ignored and v != reference[k]}


def departure_lines(configs) -> list[str]:
    """One line per key in which any of ``configs`` departs from the paper: the key, the values
    of the runs (with their methods) and the published value; empty when none departs."""
    found: dict[str, dict] = {}
    for c in configs:
        for key, (value, published_value) in departures(c).items():
            entry = found.setdefault(key, {"runs": {}, "published": {}})
            entry["runs"].setdefault(repr(value), set()).add(c.method)
            entry["published"].setdefault(repr(published_value), set()).add(c.method)
    lines = []
    for key in sorted(found):
        runs = "; ".join(f"{v} ({', '.join(sorted(ms))})" for v, ms in found[key]["runs"].items())
        published_values = "; ".join(f"{v} ({', '.join(sorted(ms))})" for v, ms in found[key]["published"].items())
        lines.append(f"{key}: runs {runs} | paper {published_values}")
    return lines
