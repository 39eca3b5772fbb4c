"""One configuration object for every knob of a run, its presets, YAML in and out, validation.

Resolution order (later wins): the dataclass defaults, the preset for the dataset
(``paper`` or ``quick``), a YAML file, then explicit overrides (command line or notebook).
Every field is a plain value so the resolved config can be written beside the run's results
and compared on resume.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import RdfcilError
from .precision import PHASES, PRECISIONS

BACKBONES = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet18")
PRESETS = ("paper", "quick", "none")
RKD_KINDS = ("angle", "distance", "none")
RRL_FORWARDS = ("separate", "joint")
RESNET_VARIANTS = ("published", "standard")
CROP_FILLS = ("mean", "zero")
IMAGENET_CROPS = ("center_pad", "random_resized")
REFINE_COUNTS = ("task", "refinement")
DEEPINVERSION_REPLAYS = ("published", "global_ce")


def dataset_names() -> tuple[str, ...]:
    """The registered datasets (``data.SPECS``)."""
    from .data import SPECS
    return tuple(SPECS)


def method_names() -> tuple[str, ...]:
    """The registered methods (``methods.METHODS``)."""
    from .methods import METHODS
    return tuple(METHODS)


def uses_abd_scripts(method: str) -> bool:
    """Whether the paper preset of ``method`` is the ABD repository's scripts (the baselines as
    GT-RIPL/AlwaysBeDreaming-DFCIL runs them, METHOD.md section 8): its ``preset_source``."""
    from .methods import METHODS
    return getattr(METHODS.get(method), "preset_source", None) == "abd"


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
    crop_fill: str = "mean"  # mean: crop padding after normalisation (published R-DFCIL); zero: black pixels
    color_jitter: bool = False  # ABD's scripts: brightness 63/255, contrast 0.8 before the crop
    imagenet_crop: str = "center_pad"  # R-DFCIL: resize 256, centre crop 224, pad-4 crop; random_resized: ABD
    num_workers: int = 4  # folder datasets only
    # -- network (section 2) --
    backbone: str = "resnet32"
    resnet_variant: str = "published"  # published: cl-lite's (R-DFCIL code); standard: ReLU after adds, 1x1 shortcuts
    head_init_std: float | None = 0.001  # normal(0, std) head rows as published; None: PyTorch's default
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
    refine_counts: str = "task"  # task: labels of every step of the task, weights at epoch end (published); refinement
    # -- baselines (section 8) --
    kd_temperature: float = 2.0
    kd_weight: float = 1.0  # mu of the ABD repository's LwF and DeepInversion scripts
    kd_t2: bool = False  # multiply soft KD by T^2 (the ABD repository does not)
    deepinversion_replay: str = "published"  # published: CE on real + soft KD on synthetic; global_ce
    abd_mu: float = 0.1  # ABD's CIFAR-100 scripts
    abd_ce_weighting: bool = True  # ABD: CE samples weighted n_old/n_seen (old labels), n_new/n_seen (new)
    generator_carry: bool = True  # ABD repository (abd, deepinversion): one generator + Adam state for all tasks
    joint_from_scratch: bool = True  # ABD's oracle retrains from scratch at each task
    # -- run --
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA and CPU)
    phase_precision: dict = field(default_factory=dict)  # {phase: fp32|bf16} overriding precision (precision.py)
    compile: bool = False  # torch.compile the backbone
    graphs: bool = False  # each phase's step in torch.compile(mode="reduce-overhead") on CUDA (graphs.py)
    out: str | None = None
    progress: bool = True
    logger: str = "tensorboard"  # tensorboard: <out>/tb/ (nothing logged if the package is missing) | none
    log_interval: int = 50  # loss terms and lr to the logger every log_interval steps
    sync_interval: int = 50  # steps between reading the loss terms back to the host (finite check, history, bar)
    threads: int | None = field(default=None, metadata=dict(
        help="CPU threads the run computes with (torch.set_num_threads); none: PyTorch's default (OMP_NUM_THREADS, "
             "else the cores); a grid of runs on the CPU uses 1 unless set. The thread count changes the last digits "
             "of CPU results, so each run records it and a resumed or reused run is compared with it",
        unit="threads", paper=None))
    notes: str = ""  # free text, e.g. why a preset departs from the paper

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Every key a departure can hide in, at its published value: a preset starts from these.
PUBLISHED_VARIANTS = dict(resnet_variant="published", head_init_std=0.001, crop_fill="mean", color_jitter=False,
                          imagenet_crop="center_pad",
                          refine_counts="task", kd_t2=False, deepinversion_replay="published", abd_mu=0.1,
                          abd_ce_weighting=True, generator_carry=True, joint_from_scratch=True,
                          kd_temperature=2.0, kd_weight=1.0, augment=None, refine=True, local_ce=True,
                          rkd="angle", coverage_samples=2000)

# The ABD repository's scripts (experiments/cifar100-*.sh, tinyimnet-twentytask.sh, imnet-fivetask.sh):
# the settings of the paper preset for the baselines. Which the R-DFCIL paper used for its ABD
# rows is not public.
ABD_SCRIPTS = {
    "cifar100": dict(epochs=250, refinement_epochs=0, milestones=[100, 150, 200], batch_size=128,
                     weight_decay=2e-4, inversion_steps=10000, color_jitter=True, crop_fill="zero"),
    "tiny-imagenet200": dict(epochs=250, refinement_epochs=0, milestones=[100, 150, 200], batch_size=128,
                             weight_decay=2e-4, inversion_steps=10000, color_jitter=True, crop_fill="zero"),
    "imagenet100": dict(epochs=100, refinement_epochs=0, milestones=[30, 60, 80, 90], batch_size=256,
                        weight_decay=1e-4, inversion_steps=50000, color_jitter=False, crop_fill="zero",
                        imagenet_crop="random_resized"),
}
ABD_NOTES = ("paper: the ABD repository's script settings for this baseline (its losses; {epochs} epochs, "
             "milestones {milestones}, weight decay {weight_decay}, batch {batch_size}, {inversion_steps} "
             "inversion steps{jitter}); which settings the R-DFCIL paper used for its baseline rows is not "
             "public")


def _paper(dataset: str, method: str = "rdfcil") -> dict:
    """Section 7 of METHOD.md, exactly; for the ABD repository's baselines its script settings
    (section 8)."""
    common = dict(lr=0.1, lr_decay=0.1, momentum=0.9, refine_lr=0.005, inversion_lr=1e-3,
                  z_dim=1000, generator_width=128, content_temperature=1000.0, alpha_cb=1.0,
                  alpha_pr=1e-3, alpha_rf=50.0, lambda_ce=0.5, lambda_hkd=0.15, lambda_rkd=0.5,
                  synthetic_pool=0, rrl_forward="separate", train_per_class=None, lr_incremental=None,
                  inversion_batch_size=None, notes="", **PUBLISHED_VARIANTS)
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
    values = {**common, **table[dataset]}
    if uses_abd_scripts(method):
        values.update(ABD_SCRIPTS[dataset])
        values["notes"] = ABD_NOTES.format(**values, jitter=", colour jitter" if values["color_jitter"] else "")
        if dataset == "imagenet100":
            values["notes"] += "; its ImageNet script's RandomResizedCrop(224) (imagenet_crop random_resized)"
    return values


QUICK_BASELINE_NOTES = ("; for the ABD repository's baselines also the preset's schedule instead of its "
                        "scripts' (250 epochs, milestones 100/150/200, weight decay 2e-4, 10,000 inversion "
                        "steps, colour jitter)")


def _quick(dataset: str, method: str = "rdfcil") -> dict:
    """CPU budgets. Departures from the paper are listed in ``notes`` and in the README; the
    published variants (backbone, head init, losses, counts, crop fill) are kept."""
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
                  "published code runs two), class coverage from 1,000 samples; the published "
                  "variants otherwise (cl-lite's ResNet, head init std 0.001, the published losses "
                  "and class counts)"),
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
                  "the published code runs two), class coverage from 1,000 samples; the published "
                  "variants otherwise (cl-lite's ResNet, head init std 0.001, the published losses "
                  "and class counts)"),
    }
    if dataset not in table:
        raise RdfcilError(f"preset 'quick' exists for {', '.join(table)}, not for '{dataset}'; "
                          "use --preset paper")
    values = {**PUBLISHED_VARIANTS, **table[dataset]}
    if uses_abd_scripts(method):  # its augmentation, where the dataset augments at all
        values.update(color_jitter=True, crop_fill="zero")
        values["notes"] += QUICK_BASELINE_NOTES
    return values


def preset_values(preset: str, dataset: str, method: str = "rdfcil") -> dict:
    """The values a preset sets for a dataset and method (an empty dict for ``none``)."""
    if preset == "paper":
        return _paper(dataset, method)
    if preset == "quick":
        return _quick(dataset, method)
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


@functools.cache
def type_hints() -> dict:
    return typing.get_type_hints(Config)


def field_types(key: str) -> tuple[type, ...]:
    """The types a field's hint allows, ``None`` excluded: ``int | None`` -> ``(int,)``,
    ``Any`` -> ``(int, list)`` (``class_order``: an index or a list of labels)."""
    hint = type_hints()[key]
    if hint is Any:
        return (int, list)
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    return tuple(typing.get_origin(a) or a for a in args if a is not type(None))


NONE_WORDS = ("none", "null", "")
SWITCHES = tuple(name for name in FIELD_NAMES if bool in field_types(name))  # --no-<key> on the command line


def coerce(key: str, value: Any) -> Any:
    """Turn a command-line string (or YAML value) into the type of the field's hint: ``bool``
    from true/false/yes/no/on/off/1/0, ``int``, ``float``, ``list`` from YAML (``[80, 120]``),
    ``None`` from none/null where the hint allows ``None`` (for a plain ``str`` field such as
    ``rkd``, 'none' is a value)."""
    if value is None or not isinstance(value, str):
        return value
    text, kinds = value.strip(), field_types(key)
    hint = type_hints()[key]
    if text.lower() in NONE_WORDS and (hint is Any or type(None) in typing.get_args(hint)):
        return None
    if list in kinds and (text.startswith("[") or kinds == (list,)):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            raise RdfcilError(f"{key} cannot be read from '{value}' (write a list as [1, 2])") from None
        if isinstance(parsed, list):
            return parsed
    if dict in kinds:
        return parse_mapping(key, text)
    if bool in kinds:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise RdfcilError(f"{key} must be true or false, got '{value}'")
    for kind, noun in ((int, "an integer"), (float, "a number")):
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                raise RdfcilError(f"{key} must be {noun}, got '{value}'") from None
    return text


def parse_mapping(key: str, text: str) -> dict:
    """A mapping from the command line: YAML (``{rrl: fp32, base: bf16}``) or ``rrl=fp32,base=bf16``;
    ``{}`` or an empty string for none."""
    if "=" in text and not text.startswith("{"):
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        return {k.strip(): v.strip() for k, v in pairs}
    try:
        parsed = yaml.safe_load(text) if text else {}
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, dict):
        raise RdfcilError(f"{key} must be a mapping such as rrl=fp32,base=bf16 or '{{rrl: fp32}}', got '{text}'")
    return parsed


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
    method = user.get("method", Config.method)
    if dataset not in dataset_names():
        raise RdfcilError(f"unknown dataset '{dataset}'; valid datasets: {', '.join(dataset_names())}")
    values = {**preset_values(preset, dataset, method), **user}
    config = Config(**values)
    validate(config)
    return config


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RdfcilError(message)


def validate(c: Config) -> None:
    """Refuse any value that cannot run, with a one-line reason."""
    datasets, methods = dataset_names(), method_names()
    _check(c.dataset in datasets, f"unknown dataset '{c.dataset}'; valid datasets: {', '.join(datasets)}")
    _check(c.method in methods, f"unknown method '{c.method}'; valid methods: {', '.join(methods)}")
    _check(c.backbone in BACKBONES, f"unknown backbone '{c.backbone}'; valid backbones: {', '.join(BACKBONES)}")
    _check(c.rkd in RKD_KINDS, f"unknown rkd '{c.rkd}'; valid: {', '.join(RKD_KINDS)}")
    _check(c.rrl_forward in RRL_FORWARDS,
           f"unknown rrl_forward '{c.rrl_forward}'; valid: {', '.join(RRL_FORWARDS)}")
    for name, valid in (("resnet_variant", RESNET_VARIANTS), ("crop_fill", CROP_FILLS),
                        ("imagenet_crop", IMAGENET_CROPS), ("refine_counts", REFINE_COUNTS),
                        ("deepinversion_replay", DEEPINVERSION_REPLAYS)):
        _check(getattr(c, name) in valid, f"unknown {name} '{getattr(c, name)}'; valid: {', '.join(valid)}")
    _check(c.head_init_std is None or c.head_init_std > 0,
           f"head_init_std must be positive or none, got {c.head_init_std!r}")
    _check(c.precision in PRECISIONS, f"precision must be fp32 or bf16, got '{c.precision}'")
    _check(isinstance(c.phase_precision, dict), f"phase_precision must map phases to fp32 or bf16, got {c.phase_precision!r}")
    for phase, value in c.phase_precision.items():
        _check(phase in PHASES, f"phase_precision: unknown phase '{phase}'; valid: {', '.join(PHASES)}")
        _check(value in PRECISIONS, f"phase_precision: {phase} must be fp32 or bf16, got '{value}'")
    _check(c.logger in ("tensorboard", "none"), f"logger must be tensorboard or none, got '{c.logger}'")
    for name in ("epochs", "batch_size", "num_tasks", "eval_batch_size", "log_interval", "sync_interval"):
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
    _check(c.threads is None or isinstance(c.threads, int) and c.threads > 0,
           f"threads must be a positive integer or none, got {c.threads!r}")
    _check(c.synthetic_pool >= 0, f"synthetic_pool must be >= 0, got {c.synthetic_pool!r}")
