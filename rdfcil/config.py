"""One configuration object for every knob of a run, its presets, YAML in and out, validation.

Resolution order (later wins): the dataclass defaults, the preset for the dataset
(``paper`` or ``quick``), a YAML file, then explicit overrides (command line or notebook).
Every field is a plain value so the resolved config can be written beside the run's results
and compared on resume.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import RdfcilError

DATASETS = ("digits", "fashion-mnist", "cifar100", "tiny-imagenet200", "imagenet100")
METHODS = ("finetune", "joint", "lwf", "deepinversion", "abd", "rdfcil")
BACKBONES = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet18")
PRESETS = ("paper", "quick", "none")
RKD_KINDS = ("angle", "distance", "none")
RRL_FORWARDS = ("separate", "joint")


@dataclass
class Config:
    """Every setting of a run. Section numbers refer to ../shared/METHOD.md."""

    # -- protocol (section 1) --
    dataset: str = "digits"
    method: str = "rdfcil"
    num_tasks: int = 5
    first_task_classes: int | None = None  # None: equal split
    class_order: Any = 0  # int: published order i (paper datasets) or seeded permutation; or a list
    seed: int = 0
    preset: str = "none"
    # -- data --
    data_root: str = "data"
    train_per_class: int | None = None  # subsample the training set (quick presets)
    augment: bool | None = None  # None: the dataset's default (crop + flip where it calls for it)
    num_workers: int = 4  # folder datasets only
    # -- network (section 2) --
    backbone: str = "resnet32"
    # -- optimisation (sections 3, 5, 6) --
    epochs: int = 200
    refinement_epochs: int = 40
    milestones: list = field(default_factory=lambda: [80, 120])
    lr: float = 0.1
    lr_incremental: float | None = None  # None: same as lr
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    refine_lr: float = 0.005
    eval_batch_size: int = 512
    # -- model inversion (section 4) --
    inversion_steps: int = 5000
    inversion_lr: float = 1e-3
    inversion_batch_size: int | None = None  # None: batch_size
    z_dim: int = 1000
    generator_width: int = 128
    content_temperature: float = 1000.0
    alpha_cb: float = 1.0
    alpha_pr: float = 1e-3
    alpha_rf: float = 50.0
    synthetic_pool: int = 0  # 0: draw every synthetic batch from G; n: replay from n images made once
    coverage_samples: int = 2000
    # -- R-DFCIL losses (sections 5, 6) and ablation switches --
    lambda_ce: float = 0.5
    lambda_hkd: float = 0.15
    lambda_rkd: float = 0.5
    rkd: str = "angle"
    rrl_forward: str = "separate"  # separate: real and synthetic in two forwards (published code); joint: one
    local_ce: bool = True
    refine: bool = True
    # -- baselines (section 8) --
    kd_temperature: float = 2.0
    kd_weight: float = 1.0
    abd_mu: float = 1.0
    # -- run --
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA and CPU)
    compile: bool = False  # torch.compile the backbone
    out: str | None = None
    progress: bool = True
    logger: str = "tensorboard"  # tensorboard: <out>/tb/ (nothing logged if the package is missing) | none
    log_interval: int = 50  # loss terms and lr to the logger every log_interval steps
    notes: str = ""  # free text, e.g. why a preset departs from the paper

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _paper(dataset: str) -> dict:
    """Section 7 of METHOD.md, exactly."""
    common = dict(lr=0.1, lr_decay=0.1, momentum=0.9, refine_lr=0.005, inversion_lr=1e-3,
                  z_dim=1000, generator_width=128, content_temperature=1000.0, alpha_cb=1.0,
                  alpha_pr=1e-3, alpha_rf=50.0, lambda_ce=0.5, lambda_hkd=0.15, lambda_rkd=0.5,
                  synthetic_pool=0, rrl_forward="separate", train_per_class=None, lr_incremental=None,
                  inversion_batch_size=None, notes="")
    table = {
        "cifar100": dict(backbone="resnet32", epochs=200, refinement_epochs=40,
                         milestones=[80, 120], batch_size=128, weight_decay=5e-4,
                         inversion_steps=5000),
        "tiny-imagenet200": dict(backbone="resnet32", epochs=200, refinement_epochs=40,
                                 milestones=[80, 120], batch_size=128, weight_decay=2e-4,
                                 inversion_steps=5000),
        "imagenet100": dict(backbone="resnet18", epochs=120, refinement_epochs=30,
                            milestones=[30, 60], batch_size=64, weight_decay=1e-4,
                            inversion_steps=10000),
    }
    if dataset not in table:
        raise RdfcilError(f"preset 'paper' exists for {', '.join(table)}, not for '{dataset}'; "
                          "use --preset quick or set the values yourself")
    return {**common, **table[dataset]}


def _quick(dataset: str) -> dict:
    """CPU budgets. Departures from the paper are listed in ``notes`` and in the README."""
    table = {
        "digits": dict(
            backbone="resnet20", epochs=200, refinement_epochs=40, milestones=[80, 120],
            lr=0.1, lr_incremental=None, batch_size=64, weight_decay=5e-4, refine_lr=0.2,
            inversion_steps=300, inversion_batch_size=128, generator_width=64, z_dim=256,
            synthetic_pool=2000, coverage_samples=1000, rrl_forward="joint",
            notes="quick: the paper's schedule (200 epochs, 40 refinement, milestones 80 and 120, "
                  "lr 0.1 on every task) with ResNet-20, batch 64, 300 inversion steps, "
                  "half-width generator with z_dim 256, replay from a pool of 2,000 synthetic "
                  "images, refinement lr 0.2 (160 refinement steps instead of the paper's ~1,560 "
                  "at 0.005), RRL over real + synthetic in one forward (rrl_forward joint; the "
                  "published code runs two)"),
        "fashion-mnist": dict(
            backbone="resnet8", epochs=10, refinement_epochs=3, milestones=[5],
            lr=0.1, lr_incremental=0.05, batch_size=128, weight_decay=5e-4, refine_lr=0.2,
            train_per_class=1000, augment=False,
            inversion_steps=200, inversion_batch_size=64, generator_width=64, z_dim=256,
            synthetic_pool=4000, coverage_samples=1000, rrl_forward="joint",
            notes="quick: 1,000 training images per class, ResNet-8, 10 epochs (3 refinement), "
                  "no augmentation, 200 inversion steps at batch 64, half-width generator with "
                  "z_dim 256, replay from a pool of 4,000 synthetic images, incremental lr 0.05, "
                  "refinement lr 0.2 (45 refinement steps instead of the paper's ~1,560 at 0.005: a "
                  "similar lr x steps), RRL over real + synthetic in one forward (rrl_forward joint; "
                  "the published code runs two)"),
    }
    if dataset not in table:
        raise RdfcilError(f"preset 'quick' exists for {', '.join(table)}, not for '{dataset}'; "
                          "use --preset paper")
    return table[dataset]


def preset_values(preset: str, dataset: str) -> dict:
    """The values a preset sets for a dataset (an empty dict for ``none``)."""
    if preset == "paper":
        return _paper(dataset)
    if preset == "quick":
        return _quick(dataset)
    if preset == "none":
        return {}
    raise RdfcilError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}")


FIELD_NAMES = tuple(f.name for f in fields(Config))
ALIASES = {"tasks": "num_tasks", "first_task": "first_task_classes", "root": "data_root"}


def canonical_key(key: str) -> str:
    """Map a user's key (``tasks``, ``first-task-classes``) to a field name, or fail helpfully."""
    key = key.replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in FIELD_NAMES:
        close = difflib.get_close_matches(key, FIELD_NAMES + tuple(ALIASES), n=1)
        hint = f"; did you mean '{ALIASES.get(close[0], close[0])}'?" if close else ""
        raise RdfcilError(f"unknown config key '{key}'{hint} (python -m rdfcil list shows all keys)")
    return key


def coerce(key: str, value: Any) -> Any:
    """Turn a command-line string (or YAML value) into the field's type."""
    default = getattr(Config(), key)
    if value is None or not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("none", "null", "") and key not in ("rkd", "preset", "logger"):  # 'none' is a value of these
        return None
    if key in ("milestones", "class_order") or text.startswith("["):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            raise RdfcilError(f"{key} cannot be read from '{value}' (write a list as [1, 2])") from None
        if isinstance(parsed, (int, list)):
            return parsed
    if isinstance(default, bool) or key in ("augment", "compile"):
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise RdfcilError(f"{key} must be true or false, got '{value}'")
    kind = {int: int, float: float}.get(type(default))
    if key in ("first_task_classes", "train_per_class", "inversion_batch_size"):
        kind = int
    if key == "lr_incremental":
        kind = float
    if kind is None:
        return text
    try:
        return kind(text)
    except ValueError:
        raise RdfcilError(f"{key} must be a number, got '{value}'") from None


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping read with the safe loader."""
    path = Path(path)
    if not path.is_file():
        raise RdfcilError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RdfcilError(f"config file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RdfcilError(f"config file '{path}' must hold a mapping of keys to values")
    return data


def resolve(overrides: dict | None = None, config_file: str | Path | None = None) -> Config:
    """Defaults <- preset(dataset) <- YAML file <- overrides; validated."""
    user: dict = {}
    if config_file is not None:
        user.update({canonical_key(k): coerce(canonical_key(k), v) for k, v in read_yaml(config_file).items()})
    for k, v in (overrides or {}).items():
        if v is not None or canonical_key(k) in ("first_task_classes", "out"):
            user[canonical_key(k)] = coerce(canonical_key(k), v)
    dataset = user.get("dataset", Config.dataset)
    preset = user.get("preset", Config.preset)
    if dataset not in DATASETS:
        raise RdfcilError(f"unknown dataset '{dataset}'; valid datasets: {', '.join(DATASETS)}")
    values = {**preset_values(preset, dataset), **user}
    config = Config(**values)
    validate(config)
    return config


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RdfcilError(message)


def validate(c: Config) -> None:
    """Refuse any value that cannot run, with a one-line reason."""
    _check(c.dataset in DATASETS, f"unknown dataset '{c.dataset}'; valid datasets: {', '.join(DATASETS)}")
    _check(c.method in METHODS, f"unknown method '{c.method}'; valid methods: {', '.join(METHODS)}")
    _check(c.backbone in BACKBONES, f"unknown backbone '{c.backbone}'; valid backbones: {', '.join(BACKBONES)}")
    _check(c.rkd in RKD_KINDS, f"unknown rkd '{c.rkd}'; valid: {', '.join(RKD_KINDS)}")
    _check(c.rrl_forward in RRL_FORWARDS,
           f"unknown rrl_forward '{c.rrl_forward}'; valid: {', '.join(RRL_FORWARDS)}")
    _check(c.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got '{c.precision}'")
    _check(c.logger in ("tensorboard", "none"), f"logger must be tensorboard or none, got '{c.logger}'")
    for name in ("epochs", "batch_size", "num_tasks", "eval_batch_size", "log_interval"):
        value = getattr(c, name)
        _check(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
    for name in ("lr", "refine_lr", "inversion_lr"):
        value = getattr(c, name)
        _check(isinstance(value, (int, float)) and value > 0, f"{name} must be positive, got {value!r}")
    _check(c.lr_incremental is None or c.lr_incremental > 0,
           f"lr_incremental must be positive, got {c.lr_incremental!r}")
    _check(isinstance(c.refinement_epochs, int) and 0 <= c.refinement_epochs < c.epochs,
           f"refinement_epochs must be in [0, epochs={c.epochs}), got {c.refinement_epochs!r}")
    _check(isinstance(c.inversion_steps, int) and c.inversion_steps >= 0,
           f"inversion_steps must be a non-negative integer, got {c.inversion_steps!r}")
    _check(isinstance(c.milestones, list) and all(isinstance(m, int) and m > 0 for m in c.milestones),
           f"milestones must be a list of positive epochs, got {c.milestones!r}")
    _check(c.train_per_class is None or c.train_per_class > 0,
           f"train_per_class must be positive, got {c.train_per_class!r}")
    _check(c.synthetic_pool >= 0, f"synthetic_pool must be >= 0, got {c.synthetic_pool!r}")
