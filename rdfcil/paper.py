"""Published numbers to reproduce (METHOD.md section 9) and the default plan of ``reproduce.ipynb``.

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

def published(dataset: str, method: str, num_tasks: int, first_task_classes: int | None = None) -> dict | None:
    """The published ``{"avg", "last", "last_std", "source"}`` of a setting, or None.

    ``first_task_classes`` None (or the equal share ``classes / num_tasks``) means an equal split.
    """
    from .data import SPECS
    total = SPECS[dataset].num_classes if dataset in SPECS else None
    if first_task_classes is not None and total and first_task_classes * num_tasks == total:
        first_task_classes = None
    found = PUBLISHED.get((dataset, first_task_classes, num_tasks, method))
    return dict(found) if found else None


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
        # the incremental lr 0.05 that short schedules need (METHOD.md section 10).
        "overrides": {"epochs": 30, "refinement_epochs": 8, "milestones": [15], "inversion_steps": 200,
                      "lr_incremental": 0.05},
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


def defaults(dataset: str) -> dict:
    """A copy of the default reproduction plan of ``dataset`` (see :data:`DEFAULTS`); a dataset
    without one runs every method on an equal 5-task split, seed 0, at its default preset."""
    import copy
    from .config import method_names
    from .data import dataset_spec
    spec = dataset_spec(dataset)  # the one-line error for an unknown dataset
    generic = {"methods": list(method_names()), "task_counts": [5], "seeds": [0], "first_task_classes": None,
               "preset": spec.default_preset, "overrides": {}}
    return {"class_orders": [0], **copy.deepcopy(DEFAULTS.get(dataset, generic))}


def plan(dataset: str, methods=None, task_counts=None, seeds=None, first_task_classes="default", preset=None,
         overrides=None, out_dir: str = "runs/notebooks", class_orders=None, **keys) -> list:
    """The validated configs of a reproduction: every task count x method x class order x seed.
    The repeats of the paper datasets' default plans are the published ones: class orders 0-2 at
    seed 1 (see :data:`DEFAULTS`); ``class_orders=[0]`` with ``seeds=[0, 1, 2]`` repeats over
    seeds instead.

    ``None`` (and ``first_task_classes="default"``) take the dataset's default from
    :data:`DEFAULTS`; ``first_task_classes=None`` is an equal split. ``keys`` are further
    config keys for every run (``data_root``, ``device``, ...). Each run folder is
    ``analysis.run_folder(out_dir, config)``. Every config, split included, is checked before
    any run starts, so a wrong value stops with one line before anything is trained.
    """
    from .analysis import project_path, run_folder
    from .config import resolve
    from .data import class_order, dataset_spec, task_sizes
    plan_ = defaults(dataset)
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
                    config = resolve({**budget, **keys, "dataset": dataset, "method": method, "num_tasks": num_tasks,
                                      "first_task_classes": first, "seed": seed, "class_order": order,
                                      "preset": preset or plan_["preset"]})
                    task_sizes(dataset_spec(dataset).num_classes, config.num_tasks, config.first_task_classes)
                    class_order(dataset, dataset_spec(dataset).num_classes, config.class_order)  # a valid order
                    config.out = str(run_folder(out_dir, config))
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
                 "out", "progress", "device", "num_workers", "eval_batch_size", "notes", "data_root"}


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
