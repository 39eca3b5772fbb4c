"""The branches that run only on CUDA, run on the CPU with torch's CUDA calls replaced by fakes
that validate their arguments as torch does (``rdfcil.fakecuda``)."""

import pytest
import torch

from rdfcil.config import resolve
from rdfcil.distributed import Distributed, pick_device
from rdfcil.errors import RdfcilError
from rdfcil.fakecuda import fake_cuda


def test_the_fakes_refuse_what_torch_refuses():
    """The crash of every single-process CUDA run: ``set_device`` of a device without index."""
    with fake_cuda(2) as cuda:
        with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
            torch.cuda.set_device(torch.device("cuda"))
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.cuda.set_device(2)
        with pytest.raises(RuntimeError, match="invalid value of debug_mode"):
            torch.cuda.set_sync_debug_mode("loud")
        torch.cuda.set_device("cuda:1")
        assert cuda.calls == [("set_device", 1)] and torch.cuda.current_device() == 1


@pytest.mark.parametrize("name, expected", [("auto", "cuda:0"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1"),
                                            ("cpu", "cpu")])
def test_a_cuda_device_carries_its_index(name, expected):
    with fake_cuda(2):
        assert pick_device(name) == torch.device(expected)
        with pytest.raises(RdfcilError, match="2 GPU"):
            pick_device("cuda:2")


@pytest.mark.parametrize("device, ddp, index", [("cuda", Distributed(), 0), ("auto", Distributed(), 0),
                                                ("cuda:1", Distributed(), 1),
                                                ("cuda", Distributed(rank=1, world=2, local_rank=1), 1)])
def test_run_selects_an_indexed_device_and_applies_the_numerics_policy(device, ddp, index):
    from rdfcil.engine import select_device
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())
    try:
        with fake_cuda(2) as cuda:
            chosen = select_device(resolve({"dataset": "digits", "device": device, "tf32": "all",
                                            "deterministic": True}), ddp)
            assert chosen == torch.device("cuda", index) and cuda.calls == [("set_device", index)]
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            assert torch.backends.cudnn.deterministic and torch.are_deterministic_algorithms_enabled()
            select_device(resolve({"dataset": "digits", "device": device, "tf32": "none"}), ddp)
            assert not torch.backends.cudnn.allow_tf32 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags[:2]
        torch.backends.cudnn.deterministic = flags[2]
        torch.use_deterministic_algorithms(flags[3])


def test_host_to_device_pins_then_copies_without_blocking(monkeypatch):
    from rdfcil.data import host_to_device
    copies = []

    class Pinned:
        def to(self, device, non_blocking=False):
            copies.append((torch.device(device), non_blocking))
            return "on the device"
    with fake_cuda() as cuda:
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: cuda.calls.append(("pin", None)) or Pinned())
        assert host_to_device(torch.arange(3), torch.device("cuda", 0)) == "on the device"
    assert cuda.calls == [("pin", None)] and copies == [(torch.device("cuda", 0), True)]


def test_model_weights_are_channels_last_on_cuda():
    from rdfcil.nets import build_model
    from rdfcil.precision import memory_format_for
    model = memory_format_for(build_model("resnet8", 3, 32), torch.device("cuda", 0))
    assert model.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    cpu = memory_format_for(build_model("resnet8", 3, 32), torch.device("cpu"))
    assert not cpu.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_timer_and_peak_memory_use_cuda_events_of_the_indexed_device():
    from rdfcil.speed import Timer, peak_memory_mb
    with fake_cuda(2) as cuda:
        seconds = Timer(torch.device("cuda", 1))(lambda: sum(range(1000)), steps=3, warmup=1)
        assert seconds > 0 and peak_memory_mb(torch.device("cuda", 1)) == 0
    assert cuda.calls == [("synchronize", 1), ("Event.record", None), ("Event.record", None), ("synchronize", 1),
                          ("max_memory_allocated", 1)]


def test_synthetic_grid_forks_the_cuda_generator_too():
    from rdfcil.tblog import forked_rng
    with fake_cuda() as cuda:
        with forked_rng(torch.device("cuda", 0)):
            torch.manual_seed(1)
    assert ("get_rng_state", 0) in cuda.calls and ("set_rng_state", 0) in cuda.calls
    with fake_cuda() as cuda, forked_rng(torch.device("cpu")):
        pass
    assert cuda.calls == []


def test_sync_check_sets_the_debug_mode_around_two_steps_and_names_the_phase():
    from rdfcil.check import without_sync
    with fake_cuda() as cuda:
        modes = []
        assert without_sync("rrl", lambda: modes.append(torch.cuda.get_sync_debug_mode())) == "no sync"
        assert modes == [0, 0, 0, 2, 2] and torch.cuda.get_sync_debug_mode() == 0

        def syncing():
            if torch.cuda.get_sync_debug_mode() == 2:
                raise RuntimeError("called a synchronizing CUDA operation")
        with pytest.raises(RdfcilError, match="phase refine makes the host wait"):
            without_sync("refine", syncing)
        assert torch.cuda.get_sync_debug_mode() == 0
    assert ("set_sync_debug_mode", 2) in cuda.calls and cuda.calls[-1] == ("set_sync_debug_mode", 0)


def test_gradients_are_averaged_in_one_collective_per_dtype(monkeypatch):
    """Two processes with the same gradients: the sum over both, divided by 2, is each one's."""
    import torch.distributed as dist
    reduced = []

    def all_reduce(tensor):  # the other process holds the same gradients
        reduced.append(tensor.numel())
        tensor.mul_(2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    parameters = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4)),
                  torch.nn.Parameter(torch.randn(2)), torch.nn.Parameter(torch.randn(2, dtype=torch.bfloat16))]
    for p in parameters[:2] + parameters[3:]:
        p.grad = torch.randn_like(p)
    before = [p.grad.clone() for p in parameters[:2] + parameters[3:]]
    assert Distributed(rank=0, world=2).average_gradients(parameters) == 2  # fp32 and bf16
    assert sorted(reduced) == [2, 10]
    for grad, p in zip(before, parameters[:2] + parameters[3:]):
        assert torch.equal(p.grad, grad)
    assert parameters[2].grad is None and Distributed().average_gradients(parameters) == 0


def test_sync_check_keeps_its_two_steps_in_one_epoch():
    """With few batches an epoch (``--budget small``) the checked steps used to start an epoch,
    whose class index makes the host wait once: a false failure. The stream starts it before."""
    from rdfcil.check import without_sync
    from rdfcil.data import load_benchmark
    from rdfcil.speed import BatchStream
    bench = load_benchmark(resolve({"dataset": "digits", "device": "cpu", "train_per_class": 8}), "cpu")
    stream = BatchStream(bench, range(0, 2), 8, torch.Generator().manual_seed(0))
    assert stream.per_epoch == 2
    starts, batches = [], bench.train.batches

    def counted(*args, **kwargs):
        starts.append(torch.cuda.get_sync_debug_mode())  # an epoch starts: debug mode 2 would fail
        yield from batches(*args, **kwargs)
    bench.train.batches = counted
    shapes = []

    def step():
        shapes.append(stream()[0].shape)
    step.ready = stream.ready
    with fake_cuda():
        assert without_sync("base", step) == "no sync"
    assert starts == [0, 0, 0] and shapes == [(8, 1, 8, 8)] * 5
