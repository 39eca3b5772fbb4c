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
FECAM_TUKEYS = ("signed", "power", "none")
FETRIL_CLASSIFIERS = ("svm", "fc")
FETRIL_NEAREST = ("euclidean", "cosine")
TF32_MODES = ("none", "convolutions", "all")


def dataset_names() -> tuple[str, ...]:
    """The registered datasets (``data.SPECS``)."""
    from .data import SPECS
    return tuple(SPECS)


def method_names() -> tuple[str, ...]:
    """The registered methods (``methods.METHODS``)."""
    from .methods import METHODS
    return tuple(METHODS)


def preset_source(method: str) -> str | None:
    """Whose published settings the paper preset of ``method`` takes (its ``preset_source``)."""
    from .methods import METHODS
    return getattr(METHODS.get(method), "preset_source", None)


def uses_abd_scripts(method: str) -> bool:
    """Whether the paper preset of ``method`` is the ABD repository's scripts (the baselines as
    GT-RIPL/AlwaysBeDreaming-DFCIL runs them, docs/methods/inversion.md, "The baselines"): its ``preset_source``."""
    from .methods import METHODS
    return getattr(METHODS.get(method), "preset_source", None) == "abd"


# The ``paper`` metadata of a key that is no setting of the published method (how the lab runs).
NA = "n/a"
METADATA = ("help", "unit", "paper")


@dataclass
class Config:
    """Every setting of a run. Each field's metadata holds its meaning (``help``), its ``unit``
    and its published value (``paper``; :data:`NA` for keys that only say how the lab runs):
    ``python -m rdfcil list``, ``--help`` and the documentation's configuration page show them
    (:func:`key_table`). The methods are described on the documentation's methods pages."""

    # -- protocol --
    dataset: str = field(default="digits", metadata=dict(
        help="the dataset (python -m rdfcil list names them)", unit="", paper="cifar100"))
    method: str = field(default="rdfcil", metadata=dict(
        help="the method (a name from the method registry)", unit="", paper="rdfcil"))
    num_tasks: int = field(default=5, metadata=dict(
        help="number of tasks, the base task included", unit="tasks", paper=6))
    first_task_classes: int | None = field(default=None, metadata=dict(
        help="classes of the base task; none: an equal split of the classes over the tasks", unit="classes",
        paper=50))
    class_order: Any = field(default=0, metadata=dict(
        help="an index: the dataset's published order i (paper datasets) or a permutation seeded by it; or a list "
             "of labels", unit="", paper=0))
    seed: int = field(default=0, metadata=dict(
        help="seed of every random stage, derived per (seed, task, stage)", unit="", paper=1))
    preset: str = field(default="none", metadata=dict(
        help="values set before the YAML file and the overrides: paper (published), quick (a CPU budget) or none",
        unit="", paper="paper"))
    # -- data --
    data_root: str = field(default="data", metadata=dict(
        help="folder holding the datasets (<data_root>/<dataset>/...)", unit="path", paper=NA))
    train_per_class: int | None = field(default=None, metadata=dict(
        help="training images kept per class (a subsample for CPU budgets); none: all", unit="images", paper=None))
    augment: bool | None = field(default=None, metadata=dict(
        help="random crop and flip; none: the dataset's default", unit="", paper=None))
    crop_fill: str = field(default="mean", metadata=dict(
        help="padding of the random crop: mean (after normalisation, the mean colour) or zero (black pixels)",
        unit="", paper="mean"))
    color_jitter: bool = field(default=False, metadata=dict(
        help="brightness 63/255 and contrast 0.8 jitter before the crop (the ABD repository's scripts)", unit="",
        paper=False))
    imagenet_crop: str = field(default="center_pad", metadata=dict(
        help="ImageNet-100 training crop: center_pad (resize 256, centre 224, padded random crop) or "
             "random_resized (RandomResizedCrop 224)", unit="", paper="center_pad"))
    num_workers: int = field(default=4, metadata=dict(
        help="DataLoader workers of folder datasets (ImageNet-100, Tiny-ImageNet's first decoding)",
        unit="processes", paper=NA))
    # -- network --
    backbone: str = field(default="resnet32", metadata=dict(
        help="the feature extractor: resnet8, resnet14, resnet20, resnet32 (32x32 inputs) or resnet18", unit="",
        paper="resnet32"))
    resnet_variant: str = field(default="published", metadata=dict(
        help="published: the R-DFCIL code's ResNets (no ReLU after the residual additions, parameter-free "
             "shortcuts); standard: a ReLU after every addition and 1x1-conv shortcuts", unit="", paper="published"))
    head_init_std: float | None = field(default=0.001, metadata=dict(
        help="standard deviation of the normal initialisation of each head row; none: PyTorch's default",
        unit="", paper=0.001))
    # -- optimisation --
    epochs: int = field(default=200, metadata=dict(
        help="epochs per task, refinement included", unit="epochs", paper=200))
    refinement_epochs: int = field(default=40, metadata=dict(
        help="the last epochs of each incremental task spent on classifier refinement (the base task skips them)",
        unit="epochs", paper=40))
    milestones: list = field(default_factory=lambda: [80, 120], metadata=dict(
        help="epochs at which the learning rate is multiplied by lr_decay", unit="epochs", paper=[80, 120]))
    lr: float = field(default=0.1, metadata=dict(
        help="SGD learning rate of the base task (and of every task when lr_incremental is none)", unit="",
        paper=0.1))
    lr_incremental: float | None = field(default=None, metadata=dict(
        help="SGD learning rate of the incremental tasks; none: lr", unit="", paper=None))
    lr_decay: float = field(default=0.1, metadata=dict(
        help="factor applied to the learning rate at each milestone", unit="", paper=0.1))
    momentum: float = field(default=0.9, metadata=dict(help="SGD momentum", unit="", paper=0.9))
    weight_decay: float = field(default=5e-4, metadata=dict(help="SGD weight decay", unit="", paper=5e-4))
    batch_size: int = field(default=128, metadata=dict(
        help="real images per training step", unit="images", paper=128))
    refine_lr: float = field(default=0.005, metadata=dict(
        help="constant learning rate of the classifier refinement", unit="", paper=0.005))
    eval_batch_size: int = field(default=512, metadata=dict(
        help="images per evaluation batch (does not change the numbers)", unit="images", paper=NA))
    # -- model inversion --
    inversion_steps: int = field(default=5000, metadata=dict(
        help="generator training steps after each task but the last", unit="steps", paper=5000))
    inversion_lr: float = field(default=1e-3, metadata=dict(
        help="Adam learning rate of the generator", unit="", paper=1e-3))
    inversion_batch_size: int | None = field(default=None, metadata=dict(
        help="synthetic images per inversion and replay step; none: batch_size", unit="images", paper=None))
    z_dim: int = field(default=1000, metadata=dict(
        help="dimension of the generator's noise code", unit="", paper=1000))
    generator_width: int = field(default=128, metadata=dict(
        help="channels of the generator's first stage", unit="channels", paper=128))
    content_temperature: float = field(default=1000.0, metadata=dict(
        help="temperature tau of the content loss's softened pseudo-labels", unit="", paper=1000.0))
    alpha_cb: float = field(default=1.0, metadata=dict(
        help="weight of the class-balance (label entropy) term of the inversion loss", unit="", paper=1.0))
    alpha_pr: float = field(default=1e-3, metadata=dict(
        help="weight of the smoothness (total variation) prior of the inversion loss", unit="", paper=1e-3))
    alpha_rf: float = field(default=50.0, metadata=dict(
        help="weight of the BatchNorm-statistics matching term of the inversion loss", unit="", paper=50.0))
    synthetic_pool: int = field(default=0, metadata=dict(
        help="0: draw every synthetic batch from the generator; n: replay from n images made once per task",
        unit="images", paper=0))
    coverage_samples: int = field(default=2000, metadata=dict(
        help="synthetic labels drawn to measure the class coverage of the generator", unit="images", paper=2000))
    # -- R-DFCIL losses and ablation switches --
    lambda_ce: float = field(default=0.5, metadata=dict(
        help="weight of the local cross-entropy (RRL) and of the balanced cross-entropy (refinement)", unit="",
        paper=0.5))
    lambda_hkd: float = field(default=0.15, metadata=dict(
        help="weight of the hard knowledge distillation on synthetic images", unit="", paper=0.15))
    lambda_rkd: float = field(default=0.5, metadata=dict(
        help="weight of the relational knowledge distillation on real images", unit="", paper=0.5))
    rkd: str = field(default="angle", metadata=dict(
        help="relation distilled in RRL: angle, distance or none (ablation)", unit="", paper="angle"))
    rrl_forward: str = field(default="separate", metadata=dict(
        help="separate: real and synthetic batches in two forwards (the published code); joint: one forward over "
             "both", unit="", paper="separate"))
    local_ce: bool = field(default=True, metadata=dict(
        help="RRL's cross-entropy over the new classes only; false: a global CE over real + synthetic (ablation)",
        unit="", paper=True))
    refine: bool = field(default=True, metadata=dict(
        help="run the classifier refinement; false: RRL gets every epoch (ablation)", unit="", paper=True))
    refine_counts: str = field(default="task", metadata=dict(
        help="labels counted for the balanced CE's class weights: task (every step of the task, weights updated at "
             "epoch end) or refinement (refinement steps only, updated each step)", unit="", paper="task"))
    # -- baselines --
    kd_temperature: float = field(default=2.0, metadata=dict(
        help="temperature T of LwF's and DeepInversion's soft distillation", unit="", paper=2.0))
    kd_weight: float = field(default=1.0, metadata=dict(
        help="weight mu of LwF's and DeepInversion's distillation term", unit="", paper=1.0))
    kd_t2: bool = field(default=False, metadata=dict(
        help="multiply the soft distillation by T^2 (the ABD repository does not)", unit="", paper=False))
    deepinversion_replay: str = field(default="published", metadata=dict(
        help="published: CE on real images and soft KD on synthetic ones; global_ce: CE over real + synthetic "
             "with argmax labels", unit="", paper="published"))
    abd_mu: float = field(default=0.1, metadata=dict(
        help="weight of ABD's importance-weighted feature distillation", unit="", paper=0.1))
    abd_ce_weighting: bool = field(default=True, metadata=dict(
        help="weight ABD's global CE samples by n_old/n_seen (old labels) and n_new/n_seen (new labels)", unit="",
        paper=True))
    generator_carry: bool = field(default=True, metadata=dict(
        help="ABD and DeepInversion keep one generator and its Adam state from task to task; false: a fresh one",
        unit="", paper=True))
    joint_from_scratch: bool = field(default=True, metadata=dict(
        help="Joint retrains from a fresh initialisation at each task; false: it continues from the last task",
        unit="", paper=True))
    # -- analytic learning (ACIL, DS-AL) --
    analytic_buffer: int = field(default=8192, metadata=dict(
        help="units of the fixed random expansion with ReLU before the analytic head (the authors' buffer size)",
        unit="units", paper=8192))
    analytic_gamma: float = field(default=0.1, metadata=dict(
        help="ridge regularisation gamma of the analytic head (DS-AL: of its main stream)", unit="", paper=0.1))
    analytic_batch: int = field(default=4096, metadata=dict(
        help="training images per analytic update (the authors' IL batch), rounded up to whole batches; "
             "ACIL's result does not depend on it, DS-AL's does", unit="images", paper=4096))
    dsal_compensation: float = field(default=0.6, metadata=dict(
        help="DS-AL's C: the weight of the compensation stream in the scores", unit="", paper=0.6))
    dsal_gamma_comp: float = field(default=0.1, metadata=dict(
        help="ridge regularisation gamma of DS-AL's compensation stream", unit="", paper=0.1))
    # -- frozen-backbone methods: FeCAM, FeTrIL --
    fecam_tukey: str = field(default="signed", metadata=dict(
        help="FeCAM's Tukey transform of the features: signed (sign(x)|x|^beta, defined for the negative "
             "features of the published ResNet), power (x^beta, the authors'; needs non-negative features, "
             "e.g. resnet_variant standard) or none", unit="", paper="power"))
    fecam_beta: float = field(default=0.5, metadata=dict(
        help="exponent beta of FeCAM's Tukey transform", unit="", paper=0.5))
    fecam_alpha1: float = field(default=1.0, metadata=dict(
        help="FeCAM's covariance shrinkage: weight of mean(diag) added to the diagonal", unit="", paper=1.0))
    fecam_alpha2: float = field(default=1.0, metadata=dict(
        help="FeCAM's covariance shrinkage: weight of mean(off-diagonal) added off the diagonal", unit="",
        paper=1.0))
    fecam_shrink_twice: bool = field(default=True, metadata=dict(
        help="apply FeCAM's shrinkage twice to each class covariance, as the authors' code does", unit="",
        paper=True))
    fetril_classifier: str = field(default="svm", metadata=dict(
        help="FeTrIL's classifier on real and pseudo-features: svm (the authors' LinearSVC) or fc (PyCIL's "
             "linear head trained by SGD)", unit="", paper="svm"))
    fetril_nearest: str = field(default="euclidean", metadata=dict(
        help="how FeTrIL picks the new class an old class's pseudo-features come from: euclidean (authors) or "
             "cosine (PyCIL) distance of the class means", unit="", paper="euclidean"))
    fetril_svm_c: float = field(default=1.0, metadata=dict(
        help="regularisation C of FeTrIL's LinearSVC", unit="", paper=1.0))
    fetril_svm_tol: float = field(default=1e-4, metadata=dict(
        help="stopping tolerance of FeTrIL's LinearSVC", unit="", paper=1e-4))
    fetril_fc_epochs: int = field(default=50, metadata=dict(
        help="epochs of FeTrIL's fc head on features at each incremental task (PyCIL)", unit="epochs", paper=50))
    fetril_fc_lr: float = field(default=0.05, metadata=dict(
        help="learning rate of FeTrIL's fc head on features (PyCIL)", unit="", paper=0.05))
    fetril_fc_weight_decay: float = field(default=5e-4, metadata=dict(
        help="weight decay of FeTrIL's fc head on features (PyCIL)", unit="", paper=5e-4))
    # -- drift family: EFC, EFC++ --
    efc_lamb: float = field(default=10.0, metadata=dict(
        help="EFC's lambda: weight of the Empirical Feature Matrix in the feature-drift penalty", unit="",
        paper=10.0))
    efc_damping: float = field(default=0.1, metadata=dict(
        help="EFC's eta: weight of the identity (isotropic drift penalty) added to lambda times the EFM", unit="",
        paper=0.1))
    efc_protoupdate: float | None = field(default=0.2, metadata=dict(
        help="EFC's sigma of the EFM-weighted drift update of the old class means; none: means never move",
        unit="", paper=0.2))
    efc_protobatch: int = field(default=64, metadata=dict(
        help="Gaussian prototype samples of old classes drawn per EFC step before the PR-ACE split",
        unit="samples", paper=64))
    efc_self_rotation: bool = field(default=True, metadata=dict(
        help="EFC's base task also classifies the 90, 180 and 270 degree rotations of each image with an "
             "auxiliary head (3 x base classes outputs)", unit="", paper=True))
    efcpp_balance_epochs: int = field(default=50, metadata=dict(
        help="epochs of EFC++'s head re-balancing on frozen features after each incremental task", unit="epochs",
        paper=50))
    efcpp_balance_lr: float = field(default=1e-3, metadata=dict(
        help="SGD learning rate of EFC++'s head re-balancing (momentum: the run's momentum)", unit="", paper=1e-3))
    efcpp_balance_batch: int = field(default=256, metadata=dict(
        help="features (current and Gaussian samples) per step of EFC++'s head re-balancing", unit="features",
        paper=256))
    efcpp_balance_weight_decay: float = field(default=5e-4, metadata=dict(
        help="weight decay of EFC++'s head re-balancing", unit="", paper=5e-4))
    # -- drift compensation: LwF + LDC, LwF + ADC (the authors' LwF with a cosine head, NCM on prototypes) --
    drift_lamda: float = field(default=10.0, metadata=dict(
        help="weight lamda of the distillation in the drift methods' LwF (the authors' lwf.py)", unit="",
        paper=10.0))
    drift_epochs: int | None = field(default=None, metadata=dict(
        help="epochs of the drift methods' incremental tasks; none: epochs", unit="epochs", paper=100))
    drift_milestones: list | None = field(default=None, metadata=dict(
        help="the drift methods' incremental milestones; none: milestones", unit="epochs", paper=[45, 90]))
    drift_weight_decay: float | None = field(default=None, metadata=dict(
        help="SGD weight decay of the drift methods' incremental tasks; none: weight_decay", unit="", paper=2e-4))
    ldc_epochs: int = field(default=20, metadata=dict(
        help="epochs of LDC's projector on the task's images after each incremental task", unit="epochs",
        paper=20))
    ldc_lr: float = field(default=1e-3, metadata=dict(
        help="Adam learning rate of LDC's projector", unit="", paper=1e-3))
    adc_alpha: float = field(default=25.0, metadata=dict(
        help="step size alpha of ADC's attack, x - alpha g/||g|| with ||g|| over the class's batch", unit="",
        paper=25.0))
    adc_steps: int = field(default=3, metadata=dict(
        help="attack steps per old class (the authors' adv_epoch)", unit="steps", paper=3))
    adc_samples: int = field(default=100, metadata=dict(
        help="current images nearest to an old prototype that ADC attacks (the authors' sample_limit)",
        unit="images", paper=100))
    sdc: bool = field(default=False, metadata=dict(
        help="also move the old prototypes by semantic drift compensation (Yu et al., CVPR 2020) before "
             "LDC or ADC", unit="", paper=False))
    sdc_sigma: float = field(default=0.3, metadata=dict(
        help="width sigma of SDC's Gaussian weights on the distances to a prototype", unit="", paper=0.3))
    drift_augment: bool = field(default=True, metadata=dict(
        help="the drift family's task-end passes over the task's training images read them augmented, as the "
             "authors' train loaders give them: EFC's and EFC++'s EFM, class Gaussians and drift update, ADC's "
             "attacked images, SDC's pairs (the prototypes of LwF + LDC and LwF + ADC are means of unaugmented "
             "images, as theirs); false: unaugmented. Only where the run augments at all (augment)", unit="",
        paper=True))
    # -- run --
    threads: int | None = field(default=None, metadata=dict(
        help="CPU threads the run computes with (torch.set_num_threads); none: PyTorch's default (OMP_NUM_THREADS, "
             "else the cores); a grid of runs on the CPU uses 1 unless set. The thread count changes the last digits "
             "of CPU results, so each run records it and a resumed or reused run is compared with it",
        unit="threads", paper=NA))
    device: str = field(default="auto", metadata=dict(
        help="auto (CUDA when there is one), cpu, cuda or cuda:<i>", unit="", paper=NA))
    precision: str = field(default="fp32", metadata=dict(
        help="fp32, or bf16 (autocast on CUDA and CPU, the sensitive losses kept in fp32)", unit="", paper="fp32"))
    phase_precision: dict = field(default_factory=dict, metadata=dict(
        help="{phase: fp32|bf16} overriding precision for single phases (base, train, rrl, refine, inversion)",
        unit="", paper={}))
    compile: bool = field(default=False, metadata=dict(
        help="torch.compile the backbone", unit="", paper=NA))
    graphs: bool = field(default=False, metadata=dict(
        help="wrap each phase's step in torch.compile(mode='reduce-overhead') on CUDA (CUDA graphs)", unit="",
        paper=NA))
    tf32: str = field(default="convolutions", metadata=dict(
        help="where CUDA may compute fp32 in TF32 (Ampere and later): none, convolutions (PyTorch's default) "
             "or all (convolutions and matrix products)", unit="", paper="convolutions"))
    deterministic: bool = field(default=False, metadata=dict(
        help="CUDA runs only deterministic algorithms (cuDNN's and torch's; slower): a repeated GPU run then "
             "gives the same numbers bit for bit", unit="", paper=False))
    out: str | None = field(default=None, metadata=dict(
        help="the run folder; none: runs/<dataset>/<method>-<tasks>tasks-seed<seed>", unit="path", paper=NA))
    progress: bool = field(default=True, metadata=dict(
        help="show a progress bar (one line per run where nobody watches)", unit="", paper=NA))
    logger: str = field(default="tensorboard", metadata=dict(
        help="tensorboard (events in <out>/tb/, where the package is installed) or none", unit="", paper=NA))
    log_interval: int = field(default=50, metadata=dict(
        help="steps between the loss terms and learning rate sent to the logger", unit="steps", paper=NA))
    sync_interval: int = field(default=50, metadata=dict(
        help="steps between reading the loss terms back to the host (finite check, history, progress bar)",
        unit="steps", paper=NA))
    notes: str = field(default="", metadata=dict(
        help="free text, e.g. why a preset departs from the paper", unit="", paper=NA))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Every key a departure can hide in, at its published value: a preset starts from these.
PUBLISHED_VARIANTS = dict(resnet_variant="published", head_init_std=0.001, crop_fill="mean", color_jitter=False,
                          imagenet_crop="center_pad",
                          refine_counts="task", kd_t2=False, deepinversion_replay="published", abd_mu=0.1,
                          abd_ce_weighting=True, generator_carry=True, joint_from_scratch=True,
                          kd_temperature=2.0, kd_weight=1.0, augment=None, refine=True, local_ce=True,
                          rkd="angle", coverage_samples=2000, fecam_beta=0.5, fecam_alpha1=1.0, fecam_alpha2=1.0,
                          fecam_shrink_twice=True, fetril_classifier="svm", fetril_nearest="euclidean",
                          fetril_svm_c=1.0, fetril_svm_tol=1e-4, fetril_fc_epochs=50, fetril_fc_lr=0.05,
                          fetril_fc_weight_decay=5e-4, efc_lamb=10.0, efc_damping=0.1, efc_protoupdate=0.2,
                          efc_protobatch=64, efc_self_rotation=True, efcpp_balance_epochs=50, efcpp_balance_lr=1e-3,
                          efcpp_balance_batch=256, efcpp_balance_weight_decay=5e-4)
# fecam_tukey is not among them: its published value (power, x^0.5) is undefined on the published
# ResNet's negative features; the presets take "signed" and say so (BASE_NOTES).

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


def uses_analytic_schedule(method: str) -> bool:
    """Whether the paper preset of ``method`` is the analytic-learning authors' (ACIL, DS-AL)."""
    from .methods import METHODS
    return getattr(METHODS.get(method), "preset_source", None) == "analytic"


ANALYTIC_VALUES = dict(analytic_buffer=8192, analytic_gamma=0.1, analytic_batch=4096, dsal_compensation=0.6,
                       dsal_gamma_comp=0.1)
ANALYTIC_NOTES = ("paper: the analytic-learning authors' {source} base task ({epochs} epochs, lr 0.1, milestones "
                  "{milestones}, weight decay {weight_decay}, batch 128, no refinement) and analytic values "
                  "(buffer {analytic_buffer}, gamma {analytic_gamma}, IL batch {analytic_batch}, DS-AL C "
                  "{dsal_compensation} and gamma_comp {dsal_gamma_comp}){extra}; not expressed here: their own "
                  "repository's alternative base schedule (300 epochs, cosine lr 0.5 with 10 warm-up epochs, "
                  "batch 256, TrivialAugmentWide; its README reports 2-5 points more than the papers) and PyCIL's "
                  "brightness jitter (63/255) in the CIFAR augmentation (color_jitter here is ABD's, brightness "
                  "and contrast); the IL batches follow the task's fixed image order, as in PyCIL (the authors' "
                  "repository shuffles them; only DS-AL depends on the order)")
# PyCIL exps/acil.json and exps/ds-al.json (the authors' port): MultiStep, 160 / 90 epochs.
ANALYTIC_PAPER = {
    "cifar100": dict(epochs=160, refinement_epochs=0, milestones=[120, 140], lr=0.1, batch_size=128,
                     weight_decay=5e-4, **ANALYTIC_VALUES),
    "tiny-imagenet200": dict(epochs=160, refinement_epochs=0, milestones=[120, 140], lr=0.1, batch_size=128,
                             weight_decay=2e-4, **ANALYTIC_VALUES),
    "imagenet100": dict(epochs=90, refinement_epochs=0, milestones=[30, 60], lr=0.1, batch_size=128,
                        weight_decay=5e-5, **{**ANALYTIC_VALUES, "analytic_buffer": 16384,
                                             "dsal_compensation": 1.5}),
}
ANALYTIC_EXTRA = {
    "cifar100": "",
    "tiny-imagenet200": "; the authors publish no Tiny-ImageNet setting: their CIFAR-100 one with the R-DFCIL "
                        "preset's weight decay 2e-4",
    "imagenet100": "; the authors publish no ImageNet-100 setting: their ImageNet-1k one (buffer 16384, "
                   "C 1.5, weight decay 5e-5, 90 epochs)",
}
for _dataset, _values in ANALYTIC_PAPER.items():
    _values["notes"] = ANALYTIC_NOTES.format(
        source="PyCIL (exps/acil.json, exps/ds-al.json)", extra=ANALYTIC_EXTRA[_dataset], **_values)
# The base task of the frozen-backbone methods as their authors train it (their paper preset):
# FeCAM's exps/FeCAM_*.json (NCM is FeCAM's Euclidean baseline) and FeTrIL's codes/scratch.py.
BASE_RECIPES = {
    "fecam": dict(epochs=200, refinement_epochs=0, milestones=[80, 120], lr=0.1, lr_decay=0.1, momentum=0.9,
                  weight_decay=5e-4, batch_size=128),
    "fetril": dict(epochs=90, refinement_epochs=0, milestones=[30, 60], lr=0.1, lr_decay=0.1, momentum=0.9,
                   weight_decay=1e-4, batch_size=128),
    # EFC's utils/OptimizerManager.py and utilities/parse_utils.py (CIFAR-100, Tiny-ImageNet): Adam in every
    # task (the methods set Phase.optimizer), lr_incremental with no schedule, batch 64.
    "efc": dict(epochs=100, refinement_epochs=0, milestones=[45, 90], lr=1e-3, lr_incremental=1e-4, lr_decay=0.1,
                momentum=0.9, weight_decay=2e-4, batch_size=64),
}
BASE_NOTES = {
    "fecam": ("paper: FeCAM's base task (exps/FeCAM_*.json: 200 epochs, lr 0.1, weight decay 5e-4, batch 128) on "
              "the protocol's backbone; then the backbone is frozen. Not expressible in the lab: its cosine-annealed "
              "lr (a step schedule at epochs 80 and 120 here), its AutoAugment (CIFAR10Policy) and "
              "ColorJitter(brightness 63/255), its cosine-classifier head (the lab's linear head; task 0 is scored "
              "by the distance to the head's rows, as the authors score it by their cosine classifier's), its "
              "ResNet-18 (the protocol's backbone here). Departure as a key: fecam_tukey signed (published: power, "
              "x^0.5, undefined on the negative features of the published ResNet, which has no ReLU after its "
              "residual additions; signed power equals it on non-negative features)"),
    "fetril": ("paper: FeTrIL's base task (codes/scratch.py: 90 epochs, lr 0.1, milestones 30 and 60, weight decay "
               "1e-4, batch 128) on the protocol's backbone; then the backbone is frozen; LinearSVC (C 1.0, tol "
               "1e-4) on L2-normalised real and pseudo-features, pseudo-features from the nearest new class by "
               "Euclidean distance of the means. Not expressible in the lab: its LUCIR ResNet-18 with a cosine "
               "classifier on 224-pixel RandomResizedCrop inputs and the 290-epoch AugMix + Lookahead fine-tune of "
               "the base model. The authors' train_classifiers.py leaves the first batch of 512 training features "
               "unnormalised; the lab normalises every feature. fetril_classifier fc is PyCIL's models/fetril.py "
               "head (50 epochs, lr 0.05, weight decay 5e-4, on raw features; PyCIL anneals its lr by a cosine, "
               "constant here; PyCIL picks the nearest class by cosine similarity: fetril_nearest cosine)"),
}
EFC_NOT_EXPRESSED = (
    "Not expressible in the lab: the authors' ResNet-18 (512-d features; the protocol's backbone here), their CIFAR "
    "augmentation Pad(4) + RandomResizedCrop(32) + flip (the lab's padded random crop and flip; the task-end "
    "passes, EFM, class Gaussians and drift, read augmented images as theirs: drift_augment), the shuffled order "
    "of those passes and the last incomplete batch they drop from the EFM (the lab reads every image once, in a "
    "fixed order)")
BASE_NOTES["efc"] = (
    "paper: EFC's code (utils/OptimizerManager.py, utilities/parse_utils.py): base task Adam lr 1e-3, weight decay "
    "2e-4, milestones 45 and 90, 100 epochs, with the self-rotation head (efc_self_rotation); incremental tasks Adam "
    "lr 1e-4, weight decay 2e-4, no schedule, 100 epochs, BatchNorm frozen (statistics and affine parameters); batch "
    "64; lambda 10, eta 0.1, sigma 0.2, proto batch 64. " + EFC_NOT_EXPRESSED)
BASE_NOTES["efcpp"] = (
    "paper: EFC++'s code (ElasticFeatPlusPlus.py, utils/OptimizerManager.py, utilities/parse_utils.py): EFC's "
    "schedule (base task Adam lr 1e-3, weight decay 2e-4, milestones 45 and 90, 100 epochs, self-rotation head; "
    "incremental tasks Adam lr 1e-4 on the backbone and the new head only, 100 epochs, BatchNorm frozen; batch 64; "
    "lambda 10, eta 0.1, sigma 0.2), then the head re-balancing: SGD lr 1e-3, momentum 0.9, weight decay 5e-4, 50 "
    "epochs, batch 256. " + EFC_NOT_EXPRESSED + "; the re-balancing reads the current task's features from one "
    "augmented pass (the authors recompute them from augmented images at every epoch)")
BASE_NOTES["ncm"] = ("paper: FeCAM's base task (NCM is its Euclidean baseline; exps/FeCAM_*.json: 200 epochs, lr "
                     "0.1, weight decay 5e-4, batch 128) on the protocol's backbone; then the backbone is frozen. Not "
                     "expressible in the lab: its cosine-annealed lr (a step schedule at epochs 80 and 120 here), its "
                     "AutoAugment (CIFAR10Policy) and ColorJitter(brightness 63/255), its ResNet-18 (the protocol's "
                     "backbone here). Every task is scored by the class means, the base task included (FeCAM's code "
                     "scores its baseline's base task by its cosine classifier)")
QUICK_FROZEN_NOTES = "; for the frozen-backbone methods (NCM, FeCAM, FeTrIL) this base-task schedule instead of their authors'"
# The drift family (LwF + LDC, LwF + ADC): the authors' PyCIL forks (alviur/ldc LDC_supervised/models/lwf.py,
# dipamgoswami/ADC models/lwf.py, exps/lwf.json), which set their schedule as module constants.
BASE_RECIPES["drift"] = dict(epochs=200, refinement_epochs=0, milestones=[60, 120, 160], lr=0.1, lr_decay=0.1,
                             momentum=0.9, weight_decay=5e-4, batch_size=128, lr_incremental=0.05, drift_epochs=100,
                             drift_milestones=[45, 90], drift_weight_decay=2e-4, drift_lamda=10.0, kd_temperature=2.0,
                             backbone="resnet18", resnet_variant="standard", crop_fill="zero", ldc_epochs=20,
                             ldc_lr=1e-3, adc_alpha=25.0, adc_steps=3, adc_samples=100, sdc=False, sdc_sigma=0.3)
BASE_NOTES["drift"] = (
    "paper: the authors' LwF (alviur/ldc and dipamgoswami/ADC, models/lwf.py and exps/lwf.json): ResNet-18 "
    "(resnet_variant standard: 3x3 stem without max-pool below 64 pixels, as PyCIL's CIFAR ResNet-18), a cosine "
    "head, base task 200 epochs at lr 0.1 (milestones 60, 120, 160, weight decay 5e-4), incremental tasks 100 "
    "epochs at lr 0.05 (milestones 45 and 90, weight decay 2e-4), batch 128, lamda 10 and T 2, the random crop's "
    "padding black (crop_fill zero); NCM on L2-normalised prototypes. Not expressible in the lab: AutoAugment "
    "(CIFAR10Policy) and PyCIL's ColorJitter(brightness 63/255) (color_jitter here is ABD's brightness and "
    "contrast), the last incomplete batch of each epoch (the lab drops it), the 3x3 stem of their Tiny-ImageNet "
    "ResNet-18 (the lab's standard ResNet-18 has torchvision's 7x7 stem and max-pool from 64 pixels) and their "
    "other datasets' schedules (the supplementary material's; CIFAR-100's here for every dataset). ADC's attack "
    "(and SDC) take the task's training images augmented, as the authors' train loader gives them (drift_augment), "
    "in a fixed order (theirs: shuffled; LDC's projector trains on augmented, shuffled images, as theirs); the "
    "prototypes are means of unaugmented images, as theirs; with sdc, SDC runs before LDC or ADC, as "
    "in alviur/ldc (dipamgoswami/ADC runs it after ADC), and pairs each image's old and new features (the "
    "authors' two passes over a shuffled loader pair different images)")
QUICK_DRIFT_NOTES = ("; for the drift methods (LwF + LDC, LwF + ADC) this schedule on every task (drift_epochs, "
                     "drift_milestones and drift_weight_decay none) and the preset's ResNet instead of the "
                     "authors' ResNet-18; LDC's 20 projector epochs and ADC's attack as published")


def _paper(dataset: str, method: str = "rdfcil") -> dict:
    """The published settings (docs/methods/inversion.md, "Published settings"), exactly; for the ABD repository's
    baselines its script settings."""
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
    if uses_analytic_schedule(method):
        values.update(ANALYTIC_PAPER[dataset])
        return values
    if uses_abd_scripts(method):
        values.update(ABD_SCRIPTS[dataset])
        values["notes"] = ABD_NOTES.format(**values, jitter=", colour jitter" if values["color_jitter"] else "")
        if dataset == "imagenet100":
            values["notes"] += "; its ImageNet script's RandomResizedCrop(224) (imagenet_crop random_resized)"
    source = preset_source(method)
    if source in BASE_RECIPES:
        values.update(BASE_RECIPES[source], **({"fecam_tukey": "signed"} if method == "fecam" else {}))
        values["notes"] = BASE_NOTES[method if method in BASE_NOTES else source]
    return values


QUICK_BASELINE_NOTES = ("; for the ABD repository's baselines also the preset's schedule instead of its "
                        "scripts' (250 epochs, milestones 100/150/200, weight decay 2e-4, 10,000 inversion "
                        "steps, colour jitter)")


QUICK_ANALYTIC_BUFFER = 1024
QUICK_ANALYTIC_NOTES = ("; for the analytic methods a random expansion of 1,024 units instead of the authors' "
                        "8,192 (an 8 MiB autocorrelation matrix instead of 512 MiB) and the preset's base "
                        "schedule (the epochs before refinement) instead of theirs")


# EFC and EFC++ in the quick presets: the preset's epochs, milestones and batch with the authors' Adam learning
# rates and weight decay (Adam at the SGD lr 0.1 diverges), no refinement epochs, no self-rotation.
QUICK_EFC = dict(lr=1e-3, lr_incremental=1e-4, weight_decay=2e-4, refinement_epochs=0, efc_self_rotation=False)
QUICK_EFC_NOTES = ("; for EFC and EFC++ the preset's epochs, milestones and batch with the authors' Adam (lr 1e-3 "
                   "on the base task, 1e-4 after, weight decay 2e-4), no refinement epochs and no self-rotation head "
                   "(efc_self_rotation false: it quadruples the base task's images)")


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
    if uses_analytic_schedule(method):
        values.update(analytic_buffer=QUICK_ANALYTIC_BUFFER)
        values["notes"] += QUICK_ANALYTIC_NOTES
    if uses_abd_scripts(method):  # its augmentation, where the dataset augments at all
        values.update(color_jitter=True, crop_fill="zero")
        values["notes"] += QUICK_BASELINE_NOTES
    if preset_source(method) == "efc":
        values.update(QUICK_EFC)
        values["notes"] += QUICK_EFC_NOTES
    elif preset_source(method) in BASE_RECIPES:
        values.update({"fecam_tukey": "signed"} if method == "fecam" else {})
        values["notes"] += QUICK_DRIFT_NOTES if preset_source(method) == "drift" else QUICK_FROZEN_NOTES
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


def default_value(f: dataclasses.Field) -> Any:
    """A field's default (its factory called for lists and dicts)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def key_table() -> list[dict]:
    """Every config key with its default and metadata, in the order of :class:`Config`:
    ``[{"key", "default", "unit", "paper", "help"}]``. A key without ``help``, ``unit`` or
    ``paper`` metadata raises ``KeyError`` naming it."""
    rows = []
    for f in fields(Config):
        missing = [m for m in METADATA if m not in f.metadata]
        if missing:
            raise KeyError(f"config key '{f.name}' lacks metadata {', '.join(missing)}")
        rows.append({"key": f.name, "default": default_value(f), "unit": f.metadata["unit"],
                     "paper": f.metadata["paper"], "help": f.metadata["help"]})
    return rows


def show(value: Any) -> str:
    """A key's value as a user writes it (``none``, ``true``, ``[80, 120]``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, str) else repr(value)


def key_lines(width: int = 100) -> list[str]:
    """Every key for a terminal: ``--key  default  [unit; paper value]`` and its meaning below."""
    import textwrap
    lines = []
    for r in key_table():
        extra = "; ".join(x for x in (r["unit"], "" if r["paper"] == NA else f"published {show(r['paper'])}") if x)
        lines.append(f"  --{r['key'].replace('_', '-'):24s} {show(r['default'])}" + (f"  [{extra}]" if extra else ""))
        lines += textwrap.wrap(r["help"], width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines
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
                        ("deepinversion_replay", DEEPINVERSION_REPLAYS), ("fecam_tukey", FECAM_TUKEYS),
                        ("fetril_classifier", FETRIL_CLASSIFIERS), ("fetril_nearest", FETRIL_NEAREST)):
        _check(getattr(c, name) in valid, f"unknown {name} '{getattr(c, name)}'; valid: {', '.join(valid)}")
    _check(c.head_init_std is None or c.head_init_std > 0,
           f"head_init_std must be positive or none, got {c.head_init_std!r}")
    _check(c.precision in PRECISIONS, f"precision must be fp32 or bf16, got '{c.precision}'")
    _check(isinstance(c.phase_precision, dict), f"phase_precision must map phases to fp32 or bf16, got {c.phase_precision!r}")
    for phase, value in c.phase_precision.items():
        _check(phase in PHASES, f"phase_precision: unknown phase '{phase}'; valid: {', '.join(PHASES)}")
        _check(value in PRECISIONS, f"phase_precision: {phase} must be fp32 or bf16, got '{value}'")
    _check(c.tf32 in TF32_MODES, f"unknown tf32 '{c.tf32}'; valid: {', '.join(TF32_MODES)}")
    _check(isinstance(c.deterministic, bool), f"deterministic must be true or false, got {c.deterministic!r}")
    _check(not (c.compile and c.graphs), "compile and graphs both compile the model (graphs: the whole step); "
           "set one of them")
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
    for name in ("analytic_buffer", "analytic_batch"):
        value = getattr(c, name)
        _check(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
    for name in ("analytic_gamma", "dsal_gamma_comp"):
        value = getattr(c, name)
        _check(isinstance(value, (int, float)) and value > 0, f"{name} must be positive, got {value!r}")
    _check(isinstance(c.dsal_compensation, (int, float)) and c.dsal_compensation >= 0,
           f"dsal_compensation must be >= 0, got {c.dsal_compensation!r}")
    _check(c.threads is None or isinstance(c.threads, int) and c.threads > 0,
           f"threads must be a positive integer or none, got {c.threads!r}")
    _check(c.synthetic_pool >= 0, f"synthetic_pool must be >= 0, got {c.synthetic_pool!r}")
    _check(isinstance(c.fecam_beta, (int, float)) and c.fecam_beta > 0,
           f"fecam_beta must be positive (the authors' beta 0, a log transform, is not offered), got {c.fecam_beta!r}")
    _check(not (c.method == "fecam" and c.fecam_tukey == "power" and c.resnet_variant == "published"),
           "fecam_tukey power (x^beta) is undefined on the published ResNet's negative features; "
           "use fecam_tukey signed or resnet_variant standard")
    for name in ("fecam_alpha1", "fecam_alpha2", "fetril_fc_weight_decay"):
        _check(isinstance(getattr(c, name), (int, float)) and getattr(c, name) >= 0,
               f"{name} must be >= 0, got {getattr(c, name)!r}")
    for name in ("fetril_svm_c", "fetril_svm_tol", "fetril_fc_lr"):
        _check(isinstance(getattr(c, name), (int, float)) and getattr(c, name) > 0,
               f"{name} must be positive, got {getattr(c, name)!r}")
    _check(isinstance(c.fetril_fc_epochs, int) and c.fetril_fc_epochs > 0,
           f"fetril_fc_epochs must be a positive integer, got {c.fetril_fc_epochs!r}")
    for name in ("efc_lamb", "efc_damping", "efcpp_balance_weight_decay"):
        _check(isinstance(getattr(c, name), (int, float)) and getattr(c, name) >= 0,
               f"{name} must be >= 0, got {getattr(c, name)!r}")
    _check(c.efc_protoupdate is None or isinstance(c.efc_protoupdate, (int, float)) and c.efc_protoupdate > 0,
           f"efc_protoupdate must be positive or none, got {c.efc_protoupdate!r}")
    _check(isinstance(c.efcpp_balance_lr, (int, float)) and c.efcpp_balance_lr > 0,
           f"efcpp_balance_lr must be positive, got {c.efcpp_balance_lr!r}")
    for name in ("efc_protobatch", "efcpp_balance_epochs", "efcpp_balance_batch"):
        _check(isinstance(getattr(c, name), int) and getattr(c, name) > 0,
               f"{name} must be a positive integer, got {getattr(c, name)!r}")
    _check(not (c.graphs and c.method == "efc"), "graphs cannot capture EFC's step (PR-ACE splits each batch by a "
           "random draw and replays the previous batch); run efc with graphs false")
    for name in ("ldc_epochs", "adc_steps", "adc_samples") + (("drift_epochs",) if c.drift_epochs is not None else ()):
        value = getattr(c, name)
        _check(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
    for name in ("ldc_lr", "adc_alpha", "sdc_sigma"):
        _check(isinstance(getattr(c, name), (int, float)) and getattr(c, name) > 0,
               f"{name} must be positive, got {getattr(c, name)!r}")
    _check(isinstance(c.drift_lamda, (int, float)) and c.drift_lamda >= 0,
           f"drift_lamda must be >= 0, got {c.drift_lamda!r}")
    _check(c.drift_weight_decay is None or c.drift_weight_decay >= 0,
           f"drift_weight_decay must be >= 0 or none, got {c.drift_weight_decay!r}")
    _check(c.drift_milestones is None or isinstance(c.drift_milestones, list) and
           all(isinstance(m, int) and m > 0 for m in c.drift_milestones),
           f"drift_milestones must be a list of positive epochs or none, got {c.drift_milestones!r}")
