"""bf16 autocast against fp32: the same steps agree within a stated tolerance."""


import pytest
import torch

from rdfcil import losses as L
from rdfcil.config import resolve
from rdfcil.data import load_benchmark
from rdfcil.engine import train_phase
from rdfcil.precision import autocast_for
from rdfcil.methods import Finetune, Task
from rdfcil.nets import build_model
from conftest import TEST_DEVICE

TOLERANCE = 0.05  # relative, on losses after a few SGD steps (bf16 keeps 8 bits of mantissa)


def test_relational_losses_stay_fp32_under_autocast():
    torch.manual_seed(0)
    e = torch.randn(16, 8)
    with autocast_for(torch.device("cpu"), "bf16"):
        psi = L.angle_relations(e)
        loss = L.rkd_angle(e, e + 0.1 * torch.randn(16, 8))
    assert psi.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.allclose(psi, L.angle_relations(e), atol=1e-6)


def test_bf16_and_fp32_training_agree_within_tolerance():
    histories = {}
    for precision in ("fp32", "bf16"):
        config = resolve({"dataset": "digits", "tasks": 5, "backbone": "resnet8", "epochs": 3,
                          "refinement_epochs": 0, "milestones": [], "batch_size": 64, "precision": precision,
                          "progress": False, "method": "finetune"})
        bench = load_benchmark(config, TEST_DEVICE)
        torch.manual_seed(0)
        model = build_model("resnet8", 1, 8, TEST_DEVICE)
        model.head.add_task(2)
        phase = Finetune(config, model, bench.spec).phases(Task(0, bench.tasks[0], 5))[0]
        histories[precision] = train_phase(model, phase, bench, config, torch.Generator().manual_seed(0),
                                           0, None, None)["ce"]
    fp32, bf16 = histories["fp32"], histories["bf16"]
    assert len(fp32) == 3
    assert fp32[0] == pytest.approx(bf16[0], rel=TOLERANCE)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]


def test_channels_last_only_on_cuda():
    from rdfcil.precision import channels_last, memory_format_for
    x = torch.randn(2, 3, 4, 4)
    assert channels_last(x) is x  # a CPU batch is left as it is
    conv = torch.nn.Conv2d(3, 4, 3)
    assert memory_format_for(conv, torch.device("cpu")) is conv and conv.weight.is_contiguous()
    if torch.cuda.is_available():
        assert channels_last(x.cuda()).is_contiguous(memory_format=torch.channels_last)
