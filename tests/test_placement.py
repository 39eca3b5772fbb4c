"""Everything the lab creates lands on the run's device by construction.

Built on ``meta`` (a device other than the CPU that exists everywhere): a module or tensor left
on the CPU shows up here, on a machine without a GPU, instead of crashing the first CUDA run."""

import dataclasses

import pytest
import torch

from rdfcil import losses as L
from rdfcil.analysis import load_run
from rdfcil.config import resolve
from rdfcil.data import SPECS
from rdfcil.engine import run
from rdfcil.runs import restore
from rdfcil.inversion import SyntheticReplay, build_generator, frozen_copy
from rdfcil.methods import Task, build_method
from rdfcil.nets import build_model

META = torch.device("meta")
TINY = {"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 2, "refinement_epochs": 1,
        "milestones": [1], "batch_size": 64, "inversion_steps": 3, "z_dim": 16, "generator_width": 16,
        "synthetic_pool": 64, "coverage_samples": 64, "progress": False, "device": "cpu"}


def misplaced(module: torch.nn.Module, device: torch.device) -> list[str]:
    """Names of the parameters and buffers of ``module`` that are not on ``device``."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, t in tensors if t.device != device]


@pytest.mark.parametrize("backbone, size, channels", [("resnet32", 32, 3), ("resnet8", 8, 1), ("resnet18", 224, 3),
                                                      ("resnet18", 32, 3)])
def test_model_and_grown_head_are_built_on_the_device(backbone, size, channels):
    model = build_model(backbone, channels, size, META)
    for n in (50, 10, 10):
        model.head.add_task(n)
    assert model.device == META and misplaced(model, META) == []
    logits, features = model(torch.empty(2, channels, size, size, device=META), features=True)
    assert logits.shape == (2, 70) and logits.device == META and features.device == META


def test_head_added_after_to_follows_the_model():
    """The bug of the first H100 run: a model moved after construction, then its first task added."""
    model = build_model("resnet8", 1, 8).to(META)
    model.head.add_task(5)
    assert misplaced(model, META) == []


def test_cpu_model_keeps_its_state_dict_keys():
    """The head's device anchor is not persistent: checkpoints keep the same keys as before."""
    model = build_model("resnet8", 1, 8)
    model.head.add_task(2)
    assert not any("anchor" in k for k in model.state_dict())


@pytest.mark.parametrize("method", ["finetune", "joint", "lwf", "deepinversion", "abd", "rdfcil", "efc", "efcpp"])
def test_method_modules_replay_and_counts_are_on_the_device(method):
    config = resolve({**TINY, "method": method})
    spec = SPECS["digits"]
    model = build_model(config.backbone, spec.channels, spec.image_size, META)
    m = build_method(config, model, spec)
    model.head.add_task(5)
    m.old_model = frozen_copy(model)
    generator = build_generator(config, spec, model.device)
    if m.inversion is not None:
        m.inversion.generator = generator
    model.head.add_task(5)
    task = Task(1, range(5, 10), 2)
    m.begin_task(task)
    phases = m.incremental_phases(task)
    assert misplaced(model, META) == [] and misplaced(m.old_model, META) == [] and misplaced(generator, META) == []
    for name, module in m.extra_modules().items():
        assert misplaced(module, META) == [], name
    assert all(p.device == META for phase in phases for p in phase.parameters)
    replay = SyntheticReplay(generator, m.old_model, 8, pool_size=16)
    assert all(t.device == META for t in replay.pool) and all(t.device == META for t in replay.batch())
    fresh = SyntheticReplay(generator, m.old_model, 8, pool_size=0)
    assert all(t.device == META for t in fresh.batch())


def test_projections_and_generator_constructors_take_the_device():
    assert misplaced(L.RelationProjections(64, META), META) == []
    for size in (8, 28, 32, 64, 224):
        g = build_generator(resolve(TINY), dataclasses.replace(SPECS["digits"], image_size=size), META)
        assert misplaced(g, META) == [] and g.sample_z(3).device == META


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """A finished 2-task R-DFCIL run written on the CPU."""
    folder = tmp_path_factory.mktemp("placement") / "rdfcil"
    run(resolve({**TINY, "method": "rdfcil", "out": str(folder)}))
    return folder


def test_cpu_checkpoint_restores_onto_the_device_through_the_engine(cpu_run):
    config = resolve({**TINY, "method": "rdfcil", "out": str(cpu_run)})
    view = load_run(cpu_run)  # the benchmark's task split
    model = build_model(config.backbone, 1, 8, META)
    method = build_method(config, model, view.bench.spec)
    record, _ = restore(cpu_run, 1, model, method, view.bench, config)
    assert record["accuracy_per_task"] and model.head.num_classes == 5
    assert misplaced(model, META) == [] and misplaced(method.old_model, META) == []
    assert misplaced(method.inversion.generator, META) == []


def test_cpu_checkpoint_opens_on_the_device_through_analysis(cpu_run):
    view = load_run(cpu_run, device="meta")
    assert all(t.device == META for t in view.checkpoint(1)["model"].values())
    model, generator = view.model(1), view.generator(0)
    assert model.head.num_classes == 10 and misplaced(model, META) == []
    assert misplaced(generator, META) == []


def test_step_tensors_are_made_on_the_device():
    """What a step makes itself (issue 14's sync-free step): the host-drawn augmentation numbers,
    the blur kernel of the smoothness loss, the refinement's class counts."""
    from rdfcil.data import augment_batch, color_jitter, host_to_device
    from rdfcil.inversion import published_blur_kernel
    from rdfcil.methods import ClassCounts
    drawn = torch.tensor([3, 1, 2])
    assert host_to_device(drawn, META).device == META and torch.equal(host_to_device(drawn, "cpu"), drawn)
    images = torch.zeros(4, 3, 8, 8, device=META)
    generator = torch.Generator().manual_seed(0)
    assert augment_batch(images, 2, True, generator).device == META
    assert color_jitter(images, generator=generator).device == META
    assert published_blur_kernel(3, META).device == META  # smoothness_loss builds it on the images' device
    counts = ClassCounts(10, META, per_step=True)
    counts.add(torch.tensor([0, 3, 3], device=META))
    assert counts.counts.device == META and counts.weights.device == META
    cpu_counts = ClassCounts(5, "cpu")
    cpu_counts.add(torch.tensor([0, 3, 3, 4]))
    assert cpu_counts.counts.tolist() == [1.0, 0.0, 0.0, 2.0, 1.0]  # index_add_ counts as bincount did


def test_step_record_rows_and_static_counts_stay_on_the_device():
    """What this stop added after the model is placed: the record's copy of each step's terms
    and the class counts marked static for CUDA graphs are made on the run's device."""
    from rdfcil.methods import ClassCounts
    from rdfcil.steprecord import StepRecord
    record = StepRecord(interval=10)
    record.add(0, {"ce": torch.zeros((), device=META), "kd": torch.zeros((), device=META, dtype=torch.bfloat16)})
    (_, names, row), = record.pending
    assert row.device == META and row.shape == (2,) and names == ("ce", "kd")
    counts = ClassCounts(5, META)
    counts.add(torch.tensor([1, 3], device=META))
    assert counts.counts.device == META and counts.weights.device == META
