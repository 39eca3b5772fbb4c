"""bf16 autocast against fp32: the same steps agree within a stated tolerance."""


import pytest
import torch
import yaml

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


def test_pick_fastest_takes_the_faster_precision_of_each_phase():
    from rdfcil.precision import PHASES, pick_fastest
    seconds = {"fp32": {"base": 0.0164, "rrl": 0.0360, "refine": 0.0092, "inversion": 0.0386, "train": 0.02},
               "bf16": {"base": 0.0143, "rrl": 0.0496, "refine": 0.0178, "inversion": 0.0425, "train": 0.02}}
    assert pick_fastest(seconds) == {"base": "bf16", "train": "fp32", "rrl": "fp32", "refine": "fp32",
                                     "inversion": "fp32"}  # the H100 numbers; a tie keeps fp32
    assert list(pick_fastest(seconds)) == [p for p in PHASES if p in seconds["fp32"]]  # in PHASES' order
    assert pick_fastest({"fp32": {"rrl": 2.0}, "bf16": {"rrl": 1.0}}) == {"rrl": "bf16"}


def test_phase_precision_from_the_command_line_and_its_errors():
    from rdfcil.errors import RdfcilError
    from rdfcil.precision import precision_of
    c = resolve({"phase_precision": "rrl=bf16, inversion=fp32", "precision": "fp32"})
    assert c.phase_precision == {"rrl": "bf16", "inversion": "fp32"}
    assert [precision_of(c, p) for p in ("base", "rrl", "refine", "inversion")] == ["fp32", "bf16", "fp32", "fp32"]
    assert resolve({"phase_precision": "{base: bf16}"}).phase_precision == {"base": "bf16"}
    assert resolve({}).phase_precision == {}
    for text, message in (("rrl=fp16", "rrl must be fp32 or bf16, got 'fp16'"),
                          ("warmup=bf16", "unknown phase 'warmup'"), ("[1, 2]", "must be a mapping")):
        with pytest.raises(RdfcilError, match=message):
            resolve({"phase_precision": text})


def test_phase_precision_changes_its_phase_only(tmp_path):
    """R-DFCIL with bf16 in RRL alone: the base task and the first inversion are bit-identical
    to the fp32 run; the RRL losses differ (within the bf16 tolerance); refinement, after RRL,
    moves with it."""
    from rdfcil.engine import run
    from rdfcil.io import read_json
    tiny = {"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 3, "refinement_epochs": 1,
            "milestones": [2], "inversion_steps": 5, "z_dim": 16, "generator_width": 8, "synthetic_pool": 64,
            "batch_size": 64, "progress": False, "device": TEST_DEVICE, "logger": "none"}
    histories = {}
    for name, more in (("fp32", {}), ("rrl-bf16", {"phase_precision": "rrl=bf16"})):
        run(resolve({**tiny, "out": str(tmp_path / name), **more}))
        histories[name] = read_json(tmp_path / name / "history.json")["tasks"]
    plain, mixed = histories["fp32"], histories["rrl-bf16"]
    assert yaml.safe_load((tmp_path / "rrl-bf16" / "config.yaml").read_text())["phase_precision"] == {"rrl": "bf16"}
    assert mixed[0]["phases"]["base"] == plain[0]["phases"]["base"]
    assert mixed[0]["inversion"] == plain[0]["inversion"] and len(plain[0]["inversion"]["total"]) == 5
    assert mixed[1]["phases"]["rrl"] != plain[1]["phases"]["rrl"]
    for term, values in plain[1]["phases"]["rrl"].items():
        assert mixed[1]["phases"]["rrl"][term][0] == pytest.approx(values[0], rel=TOLERANCE, abs=1e-3), term
