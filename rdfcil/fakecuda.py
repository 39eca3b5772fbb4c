"""CPU stand-ins for the CUDA calls the lab makes, so that every branch that runs only on a GPU
also runs on a machine without one (the tests, and the CPU rehearsal of ``.ci/device-check``).

``with fake_cuda(devices=2) as cuda: ...`` makes ``torch.cuda.is_available()`` report True and
replaces ``set_device``, ``current_device``, ``device_count``, ``synchronize``, ``Event``,
``max_memory_allocated``, ``reset_peak_memory_stats``, ``get_rng_state``/``set_rng_state``,
``get_sync_debug_mode``/``set_sync_debug_mode`` and ``Tensor.pin_memory``. Each stand-in
validates its arguments as torch does (a device index through
``torch.cuda._utils._get_device_index``: ``torch.device("cuda")`` without an index is refused
where torch refuses it, an index past ``devices`` raises), records the call in ``cuda.calls``
as ``(name, argument)``, and does nothing on a device. Tensors stay where they are: code under
the fake still computes on the CPU.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

SYNC_DEBUG_MODES = {"default": 0, "warn": 1, "error": 2}


class FakeCuda:
    """The stand-ins of one ``fake_cuda`` block and the calls they received."""

    def __init__(self, devices: int):
        self.devices, self.current, self.sync_debug_mode = devices, 0, 0
        self.calls: list[tuple[str, object]] = []

    def index(self, device, optional: bool) -> int:
        """``torch.cuda._utils._get_device_index`` on ``device``, the current device for None (or
        ``cuda`` without index) when ``optional``, and an index this fake has."""
        from torch.cuda._utils import _get_device_index
        if optional and (device is None or (isinstance(device, (str, torch.device))
                                            and torch.device(device).type == "cuda" and torch.device(device).index is None)):
            return self.current
        index = _get_device_index(device, optional=False)
        if not 0 <= index < self.devices:
            raise RuntimeError(f"CUDA error: invalid device ordinal (device {index} of {self.devices})")
        return index

    # -- the torch.cuda functions --------------------------------------------------------------
    def set_device(self, device) -> None:
        self.current = self.index(device, optional=False)
        self.calls.append(("set_device", self.current))

    def current_device(self) -> int:
        return self.current

    def device_count(self) -> int:
        return self.devices

    def synchronize(self, device=None) -> None:
        self.calls.append(("synchronize", self.index(device, optional=True)))

    def max_memory_allocated(self, device=None) -> int:
        self.calls.append(("max_memory_allocated", self.index(device, optional=True)))
        return 0

    def reset_peak_memory_stats(self, device=None) -> None:
        self.calls.append(("reset_peak_memory_stats", self.index(device, optional=True)))

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        self.calls.append(("get_rng_state", self.index(device, optional=True)))
        return torch.zeros(16, dtype=torch.uint8)

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
            raise TypeError("set_rng_state expects a torch.ByteTensor")
        self.calls.append(("set_rng_state", self.index(device, optional=True)))

    def get_sync_debug_mode(self) -> int:
        return self.sync_debug_mode

    def set_sync_debug_mode(self, mode) -> None:
        if isinstance(mode, str):
            if mode not in SYNC_DEBUG_MODES:
                raise RuntimeError("invalid value of debug_mode, expected one of `default`, `warn`, `error`")
            mode = SYNC_DEBUG_MODES[mode]
        self.sync_debug_mode = int(mode)
        self.calls.append(("set_sync_debug_mode", self.sync_debug_mode))

    def event_class(self):
        fake = self

        class Event:
            """A timing event: ``record`` takes the host clock (a CPU computes synchronously)."""

            def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
                self.enable_timing, self.at = enable_timing, None

            def record(self, stream=None) -> None:
                self.at = time.perf_counter()
                fake.calls.append(("Event.record", None))

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, end: "Event") -> float:
                if not (self.enable_timing and end.enable_timing):
                    raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
                if self.at is None or end.at is None:
                    raise RuntimeError("Both events must be recorded before calculating elapsed time.")
                return 1000.0 * (end.at - self.at)
        return Event


@contextmanager
def fake_cuda(devices: int = 1):
    """Inside the block, torch reports ``devices`` GPUs and its CUDA calls are :class:`FakeCuda`'s."""
    fake = FakeCuda(devices)
    replaced = {"is_available": lambda: True, "set_device": fake.set_device, "current_device": fake.current_device,
                "device_count": fake.device_count, "synchronize": fake.synchronize,
                "max_memory_allocated": fake.max_memory_allocated,
                "reset_peak_memory_stats": fake.reset_peak_memory_stats, "get_rng_state": fake.get_rng_state,
                "set_rng_state": fake.set_rng_state, "get_sync_debug_mode": fake.get_sync_debug_mode,
                "set_sync_debug_mode": fake.set_sync_debug_mode, "Event": fake.event_class()}
    saved = {name: getattr(torch.cuda, name) for name in replaced}
    saved_pin = torch.Tensor.pin_memory

    def pin_memory(tensor, device=None):
        if tensor.device.type != "cpu":
            raise RuntimeError(f"cannot pin '{tensor.device.type}' memory: only dense CPU tensors can be pinned")
        fake.calls.append(("pin_memory", None))
        return tensor
    try:
        for name, value in replaced.items():
            setattr(torch.cuda, name, value)
        torch.Tensor.pin_memory = pin_memory
        yield fake
    finally:
        for name, value in saved.items():
            setattr(torch.cuda, name, value)
        torch.Tensor.pin_memory = saved_pin
