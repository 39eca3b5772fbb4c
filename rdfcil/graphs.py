"""Whole-step graphs (``graphs: true``): each phase's step captured once, replayed by the GPU.

A ResNet-32 step at batch 128 is hundreds of small kernels, each launched by the host. With
``graphs`` the phase's loss (the forward of every model the step runs, and through AOTAutograd
its backward) is wrapped in ``torch.compile(mode="reduce-overhead")``, which records CUDA graphs
of the static-shape step (training batches have one size: ``drop_last``) and replays them.
The engine keeps ``.item()`` and the finite-loss check outside the wrapped function; Python-side
work in a method's loss (drawing the synthetic batch, counting labels) becomes a graph break,
not a wrong result. Off CUDA the switch runs eagerly (``OFF_CUDA_BACKEND`` None): CPU inductor
compiles for minutes and CUDA graphs do not exist there. Tests set ``OFF_CUDA_BACKEND = "eager"``
to run the same Dynamo tracing on the CPU and compare the losses with the plain path.
"""

from __future__ import annotations

import torch

OFF_CUDA_BACKEND: str | None = None


def step_function(loss, device: torch.device, enabled: bool):
    """``loss`` itself, or wrapped for whole-step graphs (see the module docstring)."""
    if not enabled:
        return loss
    if device.type == "cuda":
        return torch.compile(loss, mode="reduce-overhead", dynamic=False)
    if OFF_CUDA_BACKEND is not None:
        return torch.compile(loss, backend=OFF_CUDA_BACKEND, dynamic=False)
    return loss


def fused_optimizer(device: torch.device, enabled: bool) -> dict:
    """``{"fused": True}`` with ``graphs`` on CUDA: SGD's and Adam's update of every parameter in
    one fused kernel instead of a few per tensor; ``{}`` otherwise (the plain optimiser)."""
    return {"fused": True} if enabled and torch.device(device).type == "cuda" else {}
