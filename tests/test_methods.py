"""Fidelity of the method's parts: inversion, the RRL step, classifier refinement."""

import dataclasses

import pytest
import torch

from rdfcil.config import resolve
from rdfcil.data import load_benchmark
from rdfcil.engine import train_phase
from rdfcil.inversion import (BatchNormStatistics, Generator, SyntheticReplay, class_coverage,
                              frozen_copy, sample, train_generator)
from rdfcil import losses as L
from rdfcil.methods import ABD, RDFCIL, ClassCounts, DeepInversion, Joint, Task
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


def _incremental(trained_base, cls=RDFCIL, **overrides):
    """A copy of the trained base model at the start of task 1, with an (untrained) generator."""
    config, bench, base, _ = trained_base
    config = dataclasses.replace(config, **overrides)
    model = build_model("resnet8", 1, 8)
    model.head.add_task(5)
    model.load_state_dict(base.state_dict())
    method = cls(config, model, bench.spec)
    method.old_model = frozen_copy(model)
    if method.inversion is not None:
        method.inversion.generator = Generator(8, 1, z_dim=64, width=32).eval()
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


def test_224_generator_keeps_64_channels_in_every_stage():
    g = Generator(224, 3, z_dim=16)
    convs = [m for m in g.stages if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(m.in_channels == m.out_channels == 64 for m in convs)
    assert g.to_image[0].in_channels == 64 and g.start == 7
    small = Generator(32, 3, z_dim=16)  # up to 64 pixels the last stage halves (128 -> 64)
    assert [m.out_channels for m in small.stages if isinstance(m, torch.nn.Conv2d)] == [128, 64]


def test_class_counts_update_at_epoch_end_or_every_step():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    counts = ClassCounts(3, "cpu")
    counts.add(labels)
    assert counts.counts.tolist() == [3, 1, 2] and counts.weights.tolist() == [1, 1, 1]
    counts.epoch_end()  # w = 6 / (3, 1, 2) = (2, 6, 3), normalised to the smallest: (1, 3, 1.5)
    assert counts.weights.tolist() == pytest.approx([1.0, 3.0, 1.5])
    per_step = ClassCounts(3, "cpu", per_step=True)
    per_step.add(labels)
    assert per_step.weights.tolist() == pytest.approx([1.0, 3.0, 1.5])


@pytest.mark.parametrize("mode", ["task", "refinement"])
def test_refinement_counts_cover_every_step_of_the_task(trained_base, mode):
    """``task`` (published): the real and synthetic labels of RRL steps count too, and the
    weights change at epoch ends only; ``refinement``: only refinement steps count."""
    config, bench, model, method, task1 = _incremental(trained_base, refine_counts=mode)
    rrl, refine = method.phases(task1)
    x, y = next(bench.train.batches(task1.classes, 24, shuffle=True))
    model.train()
    rrl.loss(x, y)
    assert method.counts.counts.sum().item() == (24 + 64 if mode == "task" else 0)
    assert rrl.on_epoch_end == refine.on_epoch_end == method.counts.epoch_end
    rrl.on_epoch_end()
    expected = L.class_weights(method.counts.counts) if mode == "task" else torch.ones(10)
    assert torch.allclose(method.counts.weights, expected)
    model.eval()
    before = method.counts.weights.clone()
    refine.loss(x, y)
    assert method.counts.counts.sum().item() == (2 if mode == "task" else 1) * (24 + 64)
    if mode == "task":
        assert torch.equal(method.counts.weights, before)  # unchanged until the epoch ends
    else:
        assert torch.allclose(method.counts.weights, L.class_weights(method.counts.counts))


def test_deepinversion_published_ce_on_real_only_and_soft_kd_on_synthetic(trained_base):
    config, bench, model, method, task1 = _incremental(trained_base, DeepInversion)
    method.inversion.replay = SyntheticReplay(method.inversion.generator, method.old_model, 64, 256)
    (phase,) = method.phases(task1)
    x, y = next(bench.train.batches(task1.classes, 24, shuffle=True))
    model.eval()  # BatchNorm in eval mode: the joint forward equals separate ones
    torch.manual_seed(5)
    terms = phase.loss(x, y)
    assert set(terms) == {"ce", "kd", "kd_synthetic"}
    torch.manual_seed(5)
    x_s, _, old_s = method.inversion.replay.batch()
    with torch.no_grad():
        logits, logits_s, old = model(x), model(x_s), method.old_model(x)
    assert terms["ce"].item() == pytest.approx(L.global_ce(logits, y).item(), abs=1e-5)
    assert terms["kd"].item() == pytest.approx(L.kd(logits[:, :5], old, 2.0).item(), abs=1e-5)
    assert terms["kd_synthetic"].item() == pytest.approx(L.kd_seen(logits_s, old_s, 2.0).item(), abs=1e-5)
    method.config = dataclasses.replace(method.config, deepinversion_replay="global_ce")
    (phase,) = method.phases(task1)
    assert set(phase.loss(x, y)) == {"ce", "kd"}


def test_abd_weights_each_ce_sample_by_its_share_of_seen_classes(trained_base):
    config, bench, model, method, task1 = _incremental(trained_base, ABD)
    assert config.abd_mu == 0.1 and config.abd_ce_weighting
    method.inversion.replay = SyntheticReplay(method.inversion.generator, method.old_model, 64, 256)
    (phase,) = method.phases(task1)
    x, y = next(bench.train.batches(task1.classes, 24, shuffle=True))
    model.eval()
    torch.manual_seed(5)
    terms = phase.loss(x, y)
    torch.manual_seed(5)
    _, y_s, _ = method.inversion.replay.batch()
    with torch.no_grad():
        logits = model(x)
    # 5 old and 5 new of 10 seen classes: every sample weighs 0.5, the local CE is half the plain one
    assert terms["local_ce"].item() == pytest.approx(0.5 * L.local_ce(logits, y, 5).item(), abs=1e-5)
    method.config = dataclasses.replace(method.config, abd_ce_weighting=False)
    (phase,) = method.phases(task1)
    torch.manual_seed(5)
    plain = phase.loss(x, y)
    assert plain["local_ce"].item() == pytest.approx(2 * terms["local_ce"].item(), abs=1e-5)
    assert plain["global_ce"].item() == pytest.approx(2 * terms["global_ce"].item(), abs=1e-5)
    assert y_s.max() < 5


def test_abd_carries_one_generator_and_its_adam_state(trained_base, monkeypatch):
    config, bench, model, method, task1 = _incremental(trained_base, ABD, inversion_steps=3, inversion_batch_size=16,
                                                       z_dim=16, generator_width=8, coverage_samples=32)
    inversion = method.inversion
    inversion.generator = None
    inversion.invert(method.old_model, Task(0, bench.tasks[0], 3))
    first, optimizer = inversion.generator, inversion.optimizer
    inversion.invert(method.old_model, Task(1, bench.tasks[1], 3))
    assert inversion.generator is first and inversion.optimizer is optimizer
    assert max(s["step"].item() for s in optimizer.state.values()) == 6
    assert "generator_optimizer" in method.state_dict()
    fresh = ABD(dataclasses.replace(method.config, generator_carry=False), model, bench.spec).inversion
    fresh.invert(method.old_model, Task(0, bench.tasks[0], 3))
    before = fresh.generator
    from rdfcil.inversion import build_generator
    from rdfcil.methods import replay
    torch.manual_seed(7)
    drawn = build_generator(fresh.config, bench.spec, "cpu").state_dict()
    started = []
    real_train = replay.train_generator
    monkeypatch.setattr(replay, "train_generator", lambda g, *a, **k: started.append(
        {k: v.clone() for k, v in g.state_dict().items()}) or real_train(g, *a, **k))
    torch.manual_seed(7)
    fresh.invert(method.old_model, Task(1, bench.tasks[1], 3))
    # a fresh draw, written into the same tensors (their addresses stay for compiled steps)
    assert fresh.generator is before and fresh.optimizer is None
    assert all(torch.equal(started[0][k], v) for k, v in drawn.items())
    rdfcil = RDFCIL(method.config, model, bench.spec)  # R-DFCIL's code inverts a fresh generator each task
    assert not rdfcil.inversion.carry


def test_joint_from_scratch_reinitialises_every_task(trained_base):
    config, bench, model, method, task1 = _incremental(trained_base, Joint, lr_incremental=0.05)
    trained = model.backbone.stem[0].weight.detach().clone()
    method.begin_task(task1)
    assert not torch.equal(model.backbone.stem[0].weight, trained)
    blocks = [m for m in model.backbone.modules() if hasattr(m, "bn2")]
    assert all(torch.all(b.bn2.weight == 0) for b in blocks)  # the published initialisation again
    (phase,) = method.phases(task1)
    assert phase.epochs == config.epochs - config.refinement_epochs and phase.lr == config.lr
    assert phase.classes == task1.seen
    config, bench, model, method, task1 = _incremental(trained_base, Joint, joint_from_scratch=False,
                                                       lr_incremental=0.05)
    trained = model.backbone.stem[0].weight.detach().clone()
    method.begin_task(task1)
    assert torch.equal(model.backbone.stem[0].weight, trained)
    (phase,) = method.phases(task1)
    assert phase.epochs == config.epochs and phase.lr == 0.05
