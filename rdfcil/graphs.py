"""Whole-step graphs (``graphs: true``): each phase's step captured once, replayed by the GPU.

A ResNet-32 step at batch 128 is hundreds of small kernels, each launched by the host. With
``graphs`` the step's loss (the forward of every model the step runs: base, RRL, refinement,
and the inversion's generator and old model with its BatchNorm-statistics hooks; through
AOTAutograd its backward too) is wrapped in ``torch.compile(mode="reduce-overhead")``, which
records CUDA graphs of the static-shape step (training batches have one size: ``drop_last``;
the synthetic batch has a fixed size) and replays them. The optimiser's update is one fused
kernel (SGD and Adam with ``fused=True``, :func:`fused_optimizer`), not part of the graph.
Nothing in a step reads a tensor back to the host: the loss terms are read in blocks
(:class:`steprecord.StepRecord`, ``sync_interval``), class counts are kept by ``index_add_``
on the device, and host-drawn random numbers are copied asynchronously. Drawing the synthetic
batch inside a method's loss (the generator, the old model's labels, or a pick from the pool) is
traced into the same graph: traced on the CPU (2-task digits runs), R-DFCIL's, ABD's and
DeepInversion's steps had no graph break, and ``tests/test_graphs.py`` asserts none for
Finetune and R-DFCIL, with the pool and without. Off CUDA the switch runs eagerly (``OFF_CUDA_BACKEND`` None): CPU inductor compiles for minutes
and CUDA graphs do not exist there. Tests set ``OFF_CUDA_BACKEND = "eager"`` to run the same
Dynamo tracing on the CPU and compare the losses of every phase with the plain path.

Every task compiles its steps anew: the loss weights of a task are constants of its graph and
the head grows by the task's classes. Torch keeps at most ``recompile_limit`` (8) versions of
one function and runs it eagerly after that, which would turn graphs off from the ninth task
of a 10- or 25-step run on. So each task starts with :func:`new_task`, which drops the last
task's compiled steps (and their CUDA graphs' memory) with ``torch.compiler.reset()``.
"""

from __future__ import annotations

import torch

OFF_CUDA_BACKEND: str | None = None


def step_function(loss, device: torch.device, enabled: bool):
    """``loss`` itself, or wrapped for whole-step graphs (see the module docstring)."""
    if not compiling(device, enabled):
        return loss
    if torch.device(device).type == "cuda":
        return torch.compile(loss, mode="reduce-overhead", dynamic=False)
    return torch.compile(loss, backend=OFF_CUDA_BACKEND, dynamic=False)


def compiling(device: torch.device, enabled: bool) -> bool:
    """Whether :func:`step_function` compiles on ``device``."""
    return enabled and (torch.device(device).type == "cuda" or OFF_CUDA_BACKEND is not None)


def new_task(device: torch.device, enabled: bool) -> None:
    """Before a task's steps: drop every compiled step of the last task (``torch.compiler.reset()``,
    see the module docstring); nothing when nothing compiles."""
    if compiling(device, enabled):
        torch.compiler.reset()


def static_address(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, marked as living at one address for the whole run: a tensor a compiled step
    changes in place (the refinement's class counts, ``index_add_``) is then kept by CUDA graphs
    as parameters and buffers are. Any other mutated input makes torch skip CUDA graphs for the
    whole graph (and run it as plain compiled kernels). The mark changes nothing eagerly."""
    torch._dynamo.mark_static_address(tensor)
    return tensor


def fused_optimizer(device: torch.device, enabled: bool) -> dict:
    """``{"fused": True}`` with ``graphs`` on CUDA: SGD's and Adam's update of every parameter in
    one fused kernel instead of a few per tensor; ``{}`` otherwise (the plain optimiser)."""
    return {"fused": True} if enabled and torch.device(device).type == "cuda" else {}
