"""EFC and EFC++: the closed-form Empirical Feature Matrix against autograd, the penalty and the
drift weights by hand, PR-ACE's split, placement on the device, the statistics pass under two
processes, and tiny runs of both methods."""

import json
import math
import textwrap

import pytest
import torch

from rdfcil.config import resolve
from rdfcil.data import SPECS
from rdfcil.engine import run
from rdfcil.inversion import frozen_copy
from rdfcil.methods import EFC, EFCPlusPlus, Task
from rdfcil.methods.efc import (drift_weights, efm_loss, efm_sum, prace_split, prototype_drift, prototype_labels,
                                rotated)
from rdfcil.nets import build_model
from conftest import TEST_DEVICE, two_processes_and_one

META = torch.device("meta")


def test_closed_form_efm_equals_autograds_jacobian_of_log_softmax():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, 5, dtype=torch.float64, generator=g)
    weight = torch.randn(4, 5, dtype=torch.float64, generator=g)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for f in features:
        jac = torch.autograd.functional.jacobian(lambda v: torch.log_softmax(weight @ v, 0), f)  # (C, d)
        p = torch.softmax(weight @ f, 0)
        expected += sum(p[c] * torch.outer(jac[c], jac[c]) for c in range(4))
    got = efm_sum(features, weight)
    assert got.dtype == torch.float64 and got.shape == (5, 5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.linalg.eigvalsh(got).min() > -1e-10  # positive semi-definite


def test_efm_penalty_by_hand_in_two_dimensions():
    # A = 10 E + 0.1 I = [[10.1, 5], [5, 20.1]]; deltas (1, 1) and (1, -1): 40.2 and 20.2, mean 30.2
    efm = torch.tensor([[1.0, 0.5], [0.5, 2.0]])
    new = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    old = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    assert efm_loss(new, old, efm, 10.0, 0.1).item() == pytest.approx(30.2, rel=1e-6)
    assert efm_loss(new, old, efm, 0.0, 1.0).item() == pytest.approx(2.0, rel=1e-6)  # plain squared distance


def test_drift_weights_and_displacement_by_hand():
    # E = I; means (0, 0) and (2, 0); old features (0,0), (1,0), (2,0): distances -[0, 1, 4] and -[4, 1, 0],
    # min-max scaled over both rows to [1, .75, 0] and [0, .75, 1]; sigma 0.5: weights softmax(2 * scaled)
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    old = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    new = old + torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    w = drift_weights(old, means, torch.eye(2), 0.5)
    e = [math.exp(2.0), math.exp(1.5), 1.0]
    row0 = torch.tensor(e, dtype=torch.float64) / sum(e)
    torch.testing.assert_close(w[0], row0)
    torch.testing.assert_close(w[1], row0.flip(0))
    shift = prototype_drift(new, old, means, torch.eye(2), 0.5)
    torch.testing.assert_close(shift[0], torch.tensor([e[0], e[1]], dtype=torch.float64) / sum(e))
    torch.testing.assert_close(shift[1], torch.tensor([1.0, e[1]], dtype=torch.float64) / sum(e))
    flat = drift_weights(old, means, torch.zeros(2, 2), 0.2)  # every distance equal: uniform weights, no 0/0
    torch.testing.assert_close(flat, torch.full((2, 3), 1 / 3, dtype=torch.float64))


def test_prace_split_and_prototype_labels_follow_the_authors_buffer():
    # 4 classes, batch 64: the 4 shuffled indices and the same 4 again: 2 x 2 old, 2 x 2 new
    assert prace_split(2, 2, 64) == (4, 4)
    for _ in range(5):
        n, m = prace_split(90, 10, 64)
        assert n + m == 64 and m <= 10
    labels = prototype_labels(3, 64)
    assert torch.bincount(labels).tolist() in ([22, 21, 21], [21, 22, 21], [21, 21, 22])
    x, y = torch.arange(2 * 4.0).view(2, 1, 2, 2), torch.tensor([0, 1])
    turned, turned_y = rotated(x, y, 2)
    assert turned_y.tolist() == [2, 3, 4, 5, 6, 7] and torch.equal(turned[1], torch.rot90(x[0], 2, (1, 2)))


def meta_method(cls):
    config = resolve({"dataset": "digits", "tasks": 2, "backbone": "resnet8", "device": "cpu"})
    model = build_model("resnet8", 1, 8, META)
    method = cls(config, model, SPECS["digits"])
    model.head.add_task(5)
    return config, model, method


def meta_batches(shard=True, augment=False):
    yield torch.empty(4, 1, 8, 8, device=META), torch.empty(4, dtype=torch.long, device=META)


@pytest.mark.parametrize("cls", [EFC, EFCPlusPlus])
def test_statistics_phases_and_losses_are_made_on_the_device(cls):
    config, model, method = meta_method(cls)
    task0, task1 = Task(0, range(0, 5), 2), Task(1, range(5, 10), 2)
    base = method.phases(task0)[0]
    assert base.optimizer == "adam" and all(p.device == META for p in base.parameters)
    with torch.no_grad():
        method.statistics(task0, meta_batches, lambda t: t)
    method.old_model = frozen_copy(model)
    model.head.add_task(5)
    phases = method.phases(task1)
    assert all(p.device == META for phase in phases for p in phase.parameters)
    assert phases[0].optimizer == "adam" and not phases[0].train_backbone and phases[0].milestones == []
    # the losses' pieces (the lab's cross-entropies run under an fp32 autocast block, which meta has not)
    protos, labels = method.prototype_batch(5, 64, 10)
    assert protos.device == META and labels.device == META and protos.shape == (10, 64)
    x = torch.empty(4, 1, 8, 8, device=META)
    assert efm_loss(model.features(x), method.old_model.features(x), method.efm, 10.0, 0.1).device == META
    with torch.no_grad():
        method.statistics(task1, meta_batches, lambda t: t)
    if cls is EFCPlusPlus:
        assert method.train_x.device == META
        method.end_task(task1)  # outside no_grad, as the engine calls it
        assert not method.efm.requires_grad  # the next task's penalty must not reach into this task's head
    state = method.state_dict()
    assert state["means"].shape == (10, 64) and state["factors"].shape == (10, 64, 64)
    assert all(t.device == META for t in state.values())


SCRIPT = textwrap.dedent('''
    import dataclasses
    import torch
    from rdfcil.config import Config
    from rdfcil.data import SPECS, Benchmark, TensorImages
    from rdfcil.distributed import Distributed
    from rdfcil.engine import statistics_pass
    from rdfcil.inversion import frozen_copy
    from rdfcil.methods import EFC, EFCPlusPlus, Task
    from rdfcil.nets import build_model
    ddp = Distributed.from_env("cpu")
    g = torch.Generator().manual_seed(0)  # 5 classes x 30 random 8x8 images
    labels = torch.arange(5).repeat_interleave(30)
    images = (labels.view(-1, 1, 1, 1) * 40 + torch.randint(0, 60, (150, 1, 8, 8), generator=g)).to(torch.uint8)
    spec = dataclasses.replace(SPECS["digits"], crop_padding=1, flip=True)  # augmenting: drift_augment reads it
    tasks = [range(0, 3), range(3, 5)]
    bench = Benchmark(spec, TensorImages(images, labels, spec, "cpu"), None, list(range(5)), tasks)
    config = Config(batch_size=32)
    out = {{}}
    for cls in (EFC, EFCPlusPlus):
        torch.manual_seed(0)
        model = build_model("resnet8", 1, 8).eval()
        model.head.add_task(3)
        method = cls(config, model, spec)
        statistics_pass(model, method, Task(0, tasks[0], 2), bench, config, ddp)
        method.old_model = frozen_copy(model)
        with torch.no_grad():  # the backbone moves: the drift update has something to measure
            for p in model.backbone.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.head.add_task(2)
        statistics_pass(model, method, Task(1, tasks[1], 2), bench, config, ddp)
        method.end_task(Task(1, tasks[1], 2))
        out[cls.name] = method.state_dict()
    if ddp.is_main:
        torch.save(out, {out!r})
    ddp.close()
''')


def test_two_gloo_processes_give_the_statistics_of_one(tmp_path):
    one, two = two_processes_and_one(tmp_path, SCRIPT, 29537)
    for name in ("efc", "efcpp"):
        assert one[name]["counts"].tolist() == [30.0] * 5
        assert one[name]["efm"].abs().sum() > 0 and one[name]["covariances"].abs().sum() > 0
        for key, value in one[name].items():
            torch.testing.assert_close(two[name][key], value, rtol=1e-4, atol=1e-5, msg=f"{name} {key}")


TINY = {"dataset": "digits", "preset": "quick", "num_tasks": 2, "backbone": "resnet8", "epochs": 4, "milestones": [3],
        "progress": False, "logger": "none", "device": TEST_DEVICE, "efcpp_balance_epochs": 5}


@pytest.mark.parametrize("method, terms", [("efc", {"train": {"ce", "prace", "efm"}}),
                                           ("efcpp", {"train": {"ce", "efm"}, "balance": {"ce"}})])
def test_a_tiny_digits_run_beats_chance_and_records_the_loss_terms(tmp_path, method, terms):
    results = run(resolve({**TINY, "method": method, "out": str(tmp_path)}))
    assert results.finished and results.accuracy_per_task[-1] > 20.0  # 10 classes: chance is 10 %
    history = json.loads((tmp_path / "history.json").read_text())
    phases = history["tasks"][1]["phases"]
    assert {name: set(values) for name, values in phases.items()} == terms
    assert phases["train"]["efm"][-1] > 0 and all(math.isfinite(v) for v in phases["train"]["ce"])
    assert results.classifier == "linear head"


def test_incremental_steps_keep_batchnorm_and_efcpp_keeps_the_old_rows():
    """BatchNorm statistics and affine parameters stay fixed in both methods' incremental phase;
    EFC trains the old head rows, EFC++ leaves them exactly as they were (Adam's weight decay
    included) and writes its new rows into the model's head."""
    from rdfcil.data import load_benchmark
    from rdfcil.engine import statistics_pass, train_phase
    from rdfcil.nets import model_for
    config = resolve({**TINY, "method": "efc", "epochs": 1, "train_per_class": 20, "batch_size": 16})
    bench = load_benchmark(config, TEST_DEVICE)
    for cls in (EFC, EFCPlusPlus):
        torch.manual_seed(0)
        model = model_for(config, bench.spec, TEST_DEVICE)
        method = cls(config, model, bench.spec)
        model.head.add_task(5)
        statistics_pass(model, method, Task(0, bench.tasks[0], 2), bench, config)
        method.old_model = frozen_copy(model)
        model.head.add_task(5)
        task = Task(1, bench.tasks[1], 2)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        train_phase(model, method.phases(task)[0], bench, config, torch.Generator().manual_seed(0), 1, None, None)
        after = model.state_dict()
        batchnorm = [f"{m}.{t}" for m, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)
                     for t in ("weight", "bias", "running_mean", "running_var")]
        assert len(batchnorm) > 20 and all(torch.equal(after[name], before[name]) for name in batchnorm)
        assert not torch.equal(after["backbone.stem.0.weight"], before["backbone.stem.0.weight"])  # convolutions train
        old_rows_same = torch.equal(after["head.padded_weight"][:5], before["head.padded_weight"][:5])
        new_rows_same = torch.equal(after["head.padded_weight"][5:10], before["head.padded_weight"][5:10])
        assert old_rows_same == (cls is EFCPlusPlus) and not new_rows_same, cls.name
