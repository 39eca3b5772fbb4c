"""Fidelity of the method's parts: inversion, the RRL step, classifier refinement."""

import dataclasses

import pytest
import torch

from rdfcil.config import resolve
from rdfcil.data import load_benchmark
from rdfcil.engine import train_phase
from rdfcil.inversion import (BatchNormStatistics, Generator, SyntheticReplay, class_coverage,
                              frozen_copy, sample, train_generator)
from rdfcil.methods import RDFCIL, Task
from rdfcil.nets import build_model

INVERSION_WEIGHTS = dict(content_temperature=1000.0, alpha_cb=1.0, alpha_pr=1e-3, alpha_rf=50.0)


@pytest.fixture(scope="module")
def trained_base():
    """A ResNet-8 trained on the first 5 digits classes (a few seconds on a CPU)."""
    torch.manual_seed(0)
    config = resolve({"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 12,
                      "refinement_epochs": 2, "milestones": [8], "batch_size": 64, "progress": False,
                      "method": "rdfcil", "synthetic_pool": 256, "z_dim": 64, "generator_width": 32})
    bench = load_benchmark(config, "cpu")
    model = build_model("resnet8", 1, 8)
    method = RDFCIL(config, model, bench.spec)
    task0 = Task(0, bench.tasks[0], 2)
    model.head.add_task(5)
    for phase in method.phases(task0):
        train_phase(model, phase, bench, config, torch.Generator().manual_seed(0), 0, None, None)
    return config, bench, model, method


@pytest.mark.parametrize("size, channels, z_dim", [(8, 1, 32), (28, 1, 64), (32, 3, 64), (64, 3, 32), (224, 3, 16)])
def test_generator_family_shapes_and_eps_quirk(size, channels, z_dim):
    g = Generator(size, channels, z_dim=z_dim, width=16)
    x = g(torch.randn(2, z_dim))
    assert x.shape == (2, channels, size, size)
    eps = [m.eps for m in g.stages if isinstance(m, torch.nn.BatchNorm2d)]
    assert eps and all(e == 0.8 for e in eps)
    assert g.to_image[-1].affine is False


def test_batchnorm_hooks_are_removed_on_exit(trained_base):
    _, _, model, _ = trained_base
    old = frozen_copy(model)
    bns = [m for m in old.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with BatchNormStatistics(old) as stats:
        assert all(len(m._forward_pre_hooks) == 1 for m in bns)
        old(torch.randn(4, 1, 8, 8))
        assert len(stats.kls) == len(bns)
        assert stats.loss().item() > 0
    assert all(len(m._forward_pre_hooks) == 0 for m in bns)


def test_short_inversion_lowers_bn_loss_and_covers_old_classes(trained_base):
    _, _, model, _ = trained_base
    old = frozen_copy(model)
    torch.manual_seed(0)
    g = Generator(8, 1, z_dim=64, width=32)
    history = train_generator(g, old, steps=150, batch_size=64, lr=1e-2, weights=INVERSION_WEIGHTS)
    start, end = sum(history["bn_stats"][:5]) / 5, sum(history["bn_stats"][-10:]) / 10
    assert end < 0.3 * start, (start, end)
    assert set(history) == {"content", "balance", "smoothness", "bn_stats", "total"}
    _, labels, _ = sample(g, old, 500)
    coverage = class_coverage(labels, 5)
    assert sum(n > 0 for n in coverage) >= 4, coverage
    assert not any(p.requires_grad for p in old.parameters())


def _incremental(trained_base):
    """A copy of the trained base model at the start of task 1, with an (untrained) generator."""
    config, bench, base, _ = trained_base
    model = build_model("resnet8", 1, 8)
    model.head.add_task(5)
    model.load_state_dict(base.state_dict())
    method = RDFCIL(config, model, bench.spec)
    method.old_model = frozen_copy(model)
    method.generator = Generator(8, 1, z_dim=64, width=32).eval()
    task1 = Task(1, bench.tasks[1], 2)
    model.head.add_task(5)
    method.begin_task(task1)
    return config, bench, model, method, task1


def test_rrl_gradients_reach_both_projections(trained_base):
    config, bench, model, method, task1 = _incremental(trained_base)
    rrl, refine = method.phases(task1)
    assert rrl.name == "rrl" and refine.name == "refine"
    assert rrl.epochs == config.epochs - config.refinement_epochs and refine.lr == config.refine_lr
    x, y = next(bench.train.batches(task1.classes, 32, shuffle=True))
    model.train()
    terms = rrl.loss(x, y)
    assert set(terms) == {"local_ce", "hkd", "rkd"}
    sum(terms.values()).backward()
    for p in (method.projections.current.weight, method.projections.old.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert any(p is method.projections.current.weight for p in rrl.parameters)
    assert any(p is method.projections.old.weight for p in rrl.parameters)


@pytest.mark.parametrize("forward, expected", [("separate", [24, 64]), ("joint", [24 + 64])])
def test_rrl_forward_sets_which_batches_batchnorm_sees(trained_base, forward, expected):
    """``separate`` (the published code) runs two forwards, so training-mode BatchNorm sees the
    real batch and the synthetic batch each alone; ``joint`` runs one over their concatenation."""
    config, bench, model, method, task1 = _incremental(trained_base)
    method.config = dataclasses.replace(config, rrl_forward=forward)
    assert config.batch_size == 64
    rrl, _ = method.phases(task1)
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    sizes = []
    handle = first_bn.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    x, y = next(bench.train.batches(task1.classes, 24, shuffle=True))
    model.train()
    try:
        terms = rrl.loss(x, y)
    finally:
        handle.remove()
    assert sizes == expected, sizes
    assert set(terms) == {"local_ce", "hkd", "rkd"} and all(torch.isfinite(v) for v in terms.values())


def test_refinement_leaves_backbone_bit_identical(trained_base):
    config, bench, model, method, task1 = _incremental(trained_base)
    _, refine = method.phases(task1)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    refine.epochs = 2
    train_phase(model, refine, bench, config, torch.Generator().manual_seed(1), 1, None, None)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and BN buffers
    assert not torch.equal(head_before, model.head.weight)


def test_replay_pool_labels_are_old_model_argmax(trained_base):
    _, _, model, _ = trained_base
    old = frozen_copy(model)
    g = Generator(8, 1, z_dim=16, width=8)
    replay = SyntheticReplay(g, old, batch_size=10, pool_size=40)
    x, y, logits = replay.batch()
    assert x.shape == (10, 1, 8, 8) and torch.equal(y, logits.argmax(1))
    with torch.no_grad():
        assert torch.allclose(old(x), logits, atol=1e-5)
