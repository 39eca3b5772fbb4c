"""Numerical precision in one place: the autocast context of every forward (training,
evaluation, inversion, the speed benchmark), the fp32 sections inside it, and the memory
format of the model on the device.

``precision = bf16`` runs forwards under ``torch.autocast(device, bfloat16)`` on CUDA and on
the CPU; ``fp32`` runs them as they are. Losses that compare distributions or relations
(angles, distances, softmax divergences) run in fp32 whatever the autocast (:func:`fp32`).

``phase_precision`` overrides ``precision`` for single phases (:data:`PHASES`): which of the two
is faster differs from phase to phase and from device to device (a launch-bound step gains
nothing from bf16 and pays its casts), so ``bench-speed --pick-precision`` times every phase's
step both ways and prints the mapping that takes the faster of each (:func:`pick_fastest`).

What repeats bit for bit. On the CPU a run repeats exactly (same seed, same thread count), and
``graphs: true`` gives the plain run's numbers up to float rounding. On a GPU: ``tf32``
(``convolutions`` by default, as PyTorch and the published code run) computes fp32
convolutions in TF32 on Ampere and later, so fp32 runs differ from a CPU's and from
``tf32: none`` by more than rounding; cuDNN may pick non-deterministic algorithms, and some
kernels (``index_add_``, scatter) add in any order, so two runs of one config differ slightly
unless ``deterministic: true`` (slower); under ``graphs`` the random numbers drawn inside a
compiled step (synthetic batches' noise, the pool's picks) come from another stream than the
eager path's, so graphs on and off agree statistically, not
bit for bit. ``set_cuda_numerics`` applies the policy; the run's record keeps it
(``cuda_numerics``).
"""
from __future__ import annotations

import functools
from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "bf16")
# The phases a precision can be set for: the base task, a method's incremental training, the
# R-DFCIL RRL and refinement phases, the head-only phases on features (FeTrIL's fully connected
# ``head``, EFC++'s ``balance``), LDC's ``projector``, and the generator's inversion steps.
PHASES = ("base", "train", "rrl", "refine", "head", "balance", "projector", "inversion")


def precision_of(config, phase: str) -> str:
    """The precision of ``phase``: ``config.phase_precision[phase]`` where set, else
    ``config.precision``."""
    return (config.phase_precision or {}).get(phase, config.precision)


def pick_fastest(seconds: dict[str, dict[str, float]]) -> dict[str, str]:
    """``{phase: precision}`` taking, for each phase, the precision of the fewest seconds per step
    in ``seconds[precision][phase]`` (fp32 on a tie: no casts)."""
    phases = [p for p in PHASES if all(p in by_phase for by_phase in seconds.values())]
    return {p: min(PRECISIONS, key=lambda precision: (seconds[precision][p], precision != "fp32"))
            for p in phases if all(precision in seconds for precision in PRECISIONS)}


def autocast_for(device: torch.device, precision: str):
    """``torch.autocast(device.type, bfloat16)`` for ``precision = bf16``, else a null context."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def fp32(fn):
    """Run ``fn`` with autocast off and its floating tensor arguments in fp32: the angle tensor,
    distances, softmax entropies and divergences stay exact under bf16 training."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)
    return wrapper


def fp32_section(device: torch.device):
    """A block computed in fp32 inside an autocast region (``with fp32_section(x.device): ...``)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A CUDA image batch in channels-last layout, the one the model's weights use there
    (:func:`memory_format_for`); a CPU batch unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def memory_format_for(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Channels-last weights on CUDA (faster convolutions with cuDNN); unchanged elsewhere."""
    return model.to(memory_format=torch.channels_last) if torch.device(device).type == "cuda" else model


def set_cuda_numerics(tf32: str, deterministic: bool) -> dict:
    """Apply the run's CUDA numerics policy and return it as recorded in the run.

    ``tf32``: ``none`` computes fp32 convolutions and matrix products in fp32; ``convolutions``
    (PyTorch's default, the published code's) lets cuDNN run fp32 convolutions in TF32 (10-bit
    mantissa) on Ampere and later; ``all`` matrix products too. ``deterministic``: cuDNN and
    torch use deterministic algorithms only (``torch.use_deterministic_algorithms(True,
    warn_only=True)``, cuBLAS's fixed workspace), cuDNN's autotuning off. Flags only: nothing
    runs on a device, and the CPU ignores them."""
    import os
    torch.backends.cudnn.allow_tf32 = tf32 in ("convolutions", "all")
    torch.backends.cuda.matmul.allow_tf32 = tf32 == "all"
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    return {"tf32": tf32, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "deterministic": deterministic}
