"""Data-parallel training across processes started by ``torchrun``.

``torchrun --nproc_per_node=N -m rdfcil run ...`` starts N processes; each builds the same model
from the same seed, takes its shard ``[rank::N]`` of every real and synthetic batch, and after
each backward pass the gradients are averaged across processes: flattened into one buffer per
dtype, so a step makes one all-reduce (two under mixed dtypes), not one per parameter (what
DistributedDataParallel's buckets do; done explicitly because the methods call the backbone and
the head separately). BatchNorm buffers are broadcast from rank 0 after every
phase, so all processes hold the same model. Test metrics are computed on shards and summed.
Only rank 0 writes the run folder.

The generator is trained *in step* on every process: the same seed, the same full inversion
batch, no communication. That costs what training it once would cost in wall time (the other
processes would otherwise wait for a broadcast) and keeps the code path of one process; its
parameters are then broadcast from rank 0 once, so that bit-level differences between devices
cannot make the processes drift apart.

A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) is the plain path: every function
here does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import RdfcilError


def pick_device(name: str) -> torch.device:
    """The device ``name`` asks for (``auto``, ``cpu``, ``cuda``, ``cuda:i``, ``meta``); a CUDA
    device always carries its index (``cuda`` is the current device, ``cuda:0`` unless set), as
    ``torch.cuda.set_device`` and the per-device calls need it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RdfcilError("device 'cuda' was asked for but CUDA is not available here; use device=cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RdfcilError(f"unknown device '{name}'; use auto, cpu or cuda[:i]") from None
    if device.type != "cuda":
        return device
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise RdfcilError(f"device '{name}' does not exist here: {torch.cuda.device_count()} GPU(s) are visible")
    return device


def backend_for(device_name: str) -> str:
    """NCCL when the run trains on CUDA (``auto`` with a GPU, ``cuda``, ``cuda:i``), gloo otherwise."""
    return "nccl" if torch.cuda.is_available() and device_name != "cpu" else "gloo"


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> "Distributed":
        """Join the process group ``torchrun`` describes (gloo on CPU, nccl on CUDA)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend_for(device_name))
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: torch.device) -> torch.device:
        """This process's device: ``cuda:LOCAL_RANK`` on CUDA under torchrun, else ``device``."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's share ``[rank::world]`` of a batch."""
        return tensor[self.rank::self.world] if self.enabled else tensor

    def average_gradients(self, parameters) -> int:
        """Average the gradients of ``parameters`` over the processes: those of one dtype
        flattened into one buffer, all-reduced once, divided by the world size and copied back.
        Returns the number of collectives (one per gradient dtype; 0 for one process)."""
        if not self.enabled:
            return 0
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in parameters:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            flat.div_(self.world)
            for grad, averaged in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                grad.copy_(averaged)
        return len(by_dtype)

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers (BatchNorm statistics) to every process."""
        if not self.enabled:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
