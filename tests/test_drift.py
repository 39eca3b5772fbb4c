"""The drift family (LwF + LDC, LwF + ADC): the authors' LwF loss on a cosine head, LDC's
projector, ADC's attack and filter against hand computations, their tensors on the ``meta``
device, two torchrun processes against one, and a tiny digits run of each above chance."""

import math
import textwrap

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from rdfcil.config import resolve, preset_values
from rdfcil.data import SPECS, load_benchmark
from rdfcil.engine import make_optimizer, run_task
from rdfcil.errors import RdfcilError
from rdfcil.inversion import frozen_copy
from rdfcil.methods import METHODS, Phase, Task, build_method
from rdfcil.methods.adc import adc_prototypes, attack_step
from rdfcil.methods.ldc import projector_loss
from rdfcil.methods.lwfproto import lwf_loss, sdc_displacement
from rdfcil.nets import CosineHead, build_model, model_for
from conftest import TEST_DEVICE, two_processes_and_one

META = torch.device("meta")


class Linear(torch.nn.Module):
    """A stand-in model whose features are ``scale * flatten(x) @ W^T`` (identity W by default)."""

    def __init__(self, weight: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.weight, self.scale = weight, scale

    def features(self, x):
        return self.scale * x.flatten(1) @ self.weight.T


# --------------------------------------------------------------------------- the authors' LwF

def test_the_lwf_loss_on_cosine_logits_by_hand():
    head = CosineHead(2)
    head.add_task(2)
    head.add_task(1)
    with torch.no_grad():
        head.padded_weight[:3] = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
        head.sigma.fill_(4.0)
    f = torch.tensor([[3.0, 4.0], [-1.0, 0.0]])
    logits = head(f)
    # sigma cos(f, w): f/|f| = (0.6, 0.8), (-1, 0); rows (1, 0), (0, 1), (1, 1)/sqrt 2
    s = 1 / math.sqrt(2)
    expected = 4 * torch.tensor([[0.6, 0.8, 1.4 * s], [-1.0, 0.0, -s]])
    torch.testing.assert_close(logits, expected)
    old_logits = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    y = torch.tensor([2, 2])
    terms = lwf_loss(logits, old_logits, y, n_old=2, lamda=10.0, temperature=2.0)
    assert terms["ce"].item() == pytest.approx(0.0, abs=1e-6)  # CE over one new class: log softmax of one logit
    kd = 0.0
    for i in range(2):
        q = [math.exp(v / 2) for v in old_logits[i].tolist()]
        q = [v / sum(q) for v in q]
        z = [v / 2 for v in logits[i, :2].tolist()]
        log_p = [v - math.log(sum(math.exp(u) for u in z)) for v in z]
        kd -= sum(a * b for a, b in zip(q, log_p)) / 2
    assert terms["kd"].item() == pytest.approx(10.0 * kd, rel=1e-5)
    # two new classes: the CE is over them only, with y - n_old
    y2 = torch.tensor([1, 2])
    two_new = lwf_loss(logits, old_logits[:, :1], y2, n_old=1, lamda=10.0, temperature=2.0)
    assert two_new["ce"].item() == pytest.approx(F.cross_entropy(logits[:, 1:], y2 - 1).item(), rel=1e-6)


def test_the_cosine_head_is_built_for_the_drift_methods_and_keeps_its_scale():
    spec = SPECS["digits"]
    for name in ("ldc", "adc", "lwf"):
        model = model_for(resolve({"method": name, "backbone": "resnet8"}), spec)
        assert isinstance(model.head, CosineHead) == (name != "lwf"), name
    model = model_for(resolve({"method": "ldc", "backbone": "resnet8"}), spec)
    model.head.add_task(3)
    bound = 1 / math.sqrt(model.feature_dim)  # CosineLinear's U(-1/sqrt(d), 1/sqrt(d)) rows
    assert model.head.weight.abs().max() <= bound and model.head.weight.abs().max() > bound / 2
    assert model.head.sigma.item() == 1.0 and "head.sigma" in model.state_dict()
    logits = model(torch.randn(4, 1, 8, 8))
    assert logits.shape == (4, 3) and logits.abs().max() <= 1.0 + 1e-6  # sigma = 1: cosines


# --------------------------------------------------------------------------- LDC

def test_the_projector_recovers_a_known_linear_drift():
    torch.manual_seed(0)
    d = 6
    A = torch.randn(d, d) / math.sqrt(d)
    f_old = torch.randn(64, d)
    f_new = f_old @ A.T
    projector = torch.nn.Linear(d, d, bias=False)
    phase = Phase("projector", 1, 1e-2, list(projector.parameters()), None, range(0), weight_decay=0.0,
                  optimizer="adam")
    optimizer = make_optimizer(phase, resolve({}), torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.Adam)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [500, 800], 0.1)
    for _ in range(1000):
        loss = projector_loss(projector, f_old, f_new)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    assert (projector.weight.detach() - A).abs().max() < 1e-4
    assert projector_loss(projector, f_old, f_new).item() < 1e-8


def test_ldc_moves_the_old_prototypes_by_its_projector_and_appends_the_new_means():
    torch.manual_seed(0)
    model = build_model("resnet8", 1, 8, head="cosine").eval()
    model.head.add_task(2)
    m = build_method(resolve({"method": "ldc", "backbone": "resnet8"}), model, SPECS["digits"])
    x = torch.randn(6, 1, 8, 8)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    with torch.no_grad():
        m.statistics(Task(0, range(0, 2), 2), lambda shard=True, augment=False: iter([(x, y)]), lambda t: t)
        f = model.features(x)
    torch.testing.assert_close(m.prototypes, torch.stack([f[y == 0].mean(0), f[y == 1].mean(0)]))
    m.old_model = frozen_copy(model)
    model.head.add_task(2)
    m.incremental_phases(Task(1, range(2, 4), 2))
    x2, y2 = torch.randn(4, 1, 8, 8), torch.tensor([2, 3, 2, 3])
    old = m.prototypes.clone()
    with torch.no_grad():
        m.statistics(Task(1, range(2, 4), 2), lambda shard=True, augment=False: iter([(x2, y2)]), lambda t: t)
        f2 = model.features(x2)
    torch.testing.assert_close(m.prototypes[:2], old @ m.projector.weight.T)
    torch.testing.assert_close(m.prototypes[2:], torch.stack([f2[y2 == 2].mean(0), f2[y2 == 3].mean(0)]))


# --------------------------------------------------------------------------- ADC

def test_an_attack_step_is_the_normalised_gradient_step_and_nears_the_prototype():
    torch.manual_seed(0)
    W = torch.randn(3, 4)
    old = Linear(W)
    x = torch.randn(5, 1, 2, 2)
    mu = torch.randn(3)
    step = attack_step(old, x, mu, 0.5, -10.0, 10.0)
    flat = x.flatten(1)
    grad = 2 / (5 * 3) * (flat @ W.T - mu) @ W  # d/dx mean((W x - mu)^2) over the 5 x 3 entries
    torch.testing.assert_close(step.flatten(1), flat - 0.5 * grad / grad.norm())  # one norm for the batch
    before = (old.features(x) - mu).pow(2).sum()
    after = (old.features(step) - mu).pow(2).sum()
    assert after < before
    clamped = attack_step(old, x, mu, 100.0, -0.25, 0.25)
    assert clamped.min() >= -0.25 and clamped.max() <= 0.25


def test_adc_keeps_only_the_attacked_images_the_old_ncm_assigns_to_the_class_by_hand():
    old, new = Linear(torch.eye(2)), Linear(torch.eye(2), scale=2.0)  # f_new - f_old = x'
    images = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.5, 0.0], [9.0, 0.0]]).view(4, 1, 1, 2)
    prototypes = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    moved = adc_prototypes(old, new, images, old.features(images), prototypes, alpha=0.5, steps=1, samples=2,
                           x_min=-100.0, x_max=100.0)
    # class 0: nearest (1, 0) and (2.5, 0); each steps by 0.5 (x - mu) / sqrt(1 + 2.5^2)
    n0 = math.sqrt(1 + 2.5 ** 2)
    a, e = 1 - 0.5 * 1 / n0, 2.5 - 0.5 * 2.5 / n0
    assert abs(e - 4) < abs(e - 0)  # (2.5, 0) crossed over to class 1: dropped by the filter
    mu0 = a  # only a' kept: mu_0 + (2 a' - a') = a'
    # class 1, after mu_0 moved: nearest (3, 0) and (2.5, 0), pushed toward (4, 0)
    n1 = math.sqrt(1 + 1.5 ** 2)
    b, e = 3 + 0.5 * 1 / n1, 2.5 + 0.5 * 1.5 / n1
    assert abs(b - 4) < abs(b - mu0) and abs(e - 4) < abs(e - mu0)  # both kept
    mu1 = 4 + (b + e) / 2
    torch.testing.assert_close(moved, torch.tensor([[mu0, 0.0], [mu1, 0.0]]))
    assert torch.equal(prototypes, torch.tensor([[0.0, 0.0], [4.0, 0.0]]))  # the input is left alone


def test_adc_falls_back_to_the_nearest_images_when_no_attack_succeeds():
    old, new = Linear(torch.eye(2)), Linear(torch.eye(2), scale=3.0)
    images = torch.tensor([[3.9, 0.0], [3.8, 0.0]]).view(2, 1, 1, 2)
    prototypes = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    moved = adc_prototypes(old, new, images, old.features(images), prototypes[:1].clone(), alpha=0.01, steps=1,
                           samples=2, x_min=-100.0, x_max=100.0)
    # the only prototype is class 0: the NCM over it assigns every image to 0 -> all kept
    n = math.sqrt(3.9 ** 2 + 3.8 ** 2)
    kept = [3.9 - 0.01 * 3.9 / n, 3.8 - 0.01 * 3.8 / n]
    torch.testing.assert_close(moved, torch.tensor([[2 * sum(kept) / 2, 0.0]]))
    moved = adc_prototypes(old, new, images, old.features(images), torch.tensor([[0.0, 0.0], [3.85, 0.0]]),
                           alpha=0.01, steps=1, samples=2, x_min=-100.0, x_max=100.0)
    # class 0's attacked images stay nearer class 1: none kept, the unattacked ones measure the drift
    torch.testing.assert_close(moved[0], torch.tensor([2 * (3.9 + 3.8) / 2, 0.0]))


def test_sdc_weights_the_drift_of_the_images_near_each_prototype():
    f_old = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    f_new = f_old + torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    moved, weights = sdc_displacement(f_old, f_new, torch.tensor([[0.0, 0.0]]), sigma=1.0)
    w = torch.tensor([1 + 1e-5, math.exp(-50) + 1e-5], dtype=torch.float64)
    torch.testing.assert_close(weights, w.sum()[None])
    expected = w[0] * torch.tensor([1.0, 0.0]) + w[1] * torch.tensor([0.0, 5.0])
    torch.testing.assert_close(moved, expected[None].double())


# --------------------------------------------------------------------------- meta device

@pytest.mark.parametrize("name, keys", [("ldc", {}), ("adc", {}), ("ldc", {"sdc": True})])
def test_drift_modules_prototypes_and_scores_are_on_the_device(name, keys):
    model = build_model("resnet8", 1, 8, META, head="cosine")
    assert isinstance(model.head, CosineHead) and model.head.sigma.device == META
    model.head.add_task(2)
    m = build_method(resolve({"method": name, "backbone": "resnet8", **keys}), model, SPECS["digits"])
    x, y = torch.empty(4, 1, 8, 8, device=META), torch.tensor([0, 1, 0, 1], device=META)
    with torch.no_grad():
        m.statistics(Task(0, range(0, 2), 2), lambda shard=True, augment=False: iter([(x, y)]), lambda t: t)
    assert m.prototypes.device == META and m.scores(x).device == META and m.scores(x).shape == (4, 2)
    m.old_model = frozen_copy(model)
    model.head.add_task(2)
    phases = m.incremental_phases(Task(1, range(2, 4), 2))
    assert all(p.device == META for phase in phases for p in phase.parameters)
    assert all(p.device == META for module in m.extra_modules().values() for p in module.parameters())
    if name == "ldc":
        with torch.no_grad():
            m.statistics(Task(1, range(2, 4), 2), lambda shard=True, augment=False: iter([(x, y + 2)]), lambda t: t)
        assert m.prototypes.device == META and m.prototypes.shape == (4, model.feature_dim)
    else:  # ADC's filter has a data-dependent shape, which meta cannot compute: its step
        step = attack_step(m.old_model, x, m.prototypes[0], 25.0, x.min(), x.max())
        assert step.device == META and step.shape == x.shape
    moved, weights = sdc_displacement(torch.empty(4, 8, device=META), torch.empty(4, 8, device=META),
                                      torch.empty(2, 8, device=META), 0.3)
    assert moved.device == META and weights.device == META


# --------------------------------------------------------------------------- two processes

SCRIPT = textwrap.dedent('''
    import dataclasses
    import torch
    from rdfcil.config import resolve
    from rdfcil.data import SPECS, Benchmark, TensorImages
    from rdfcil.distributed import Distributed
    from rdfcil.engine import statistics_pass
    from rdfcil.inversion import frozen_copy
    from rdfcil.methods import Task, build_method
    from rdfcil.nets import build_model
    ddp = Distributed.from_env("cpu")
    g = torch.Generator().manual_seed(0)  # 10 classes x 20 random 8x8 images, without loading a dataset
    labels = torch.arange(10).repeat_interleave(20)
    images = (labels.view(-1, 1, 1, 1) * 20 + torch.randint(0, 60, (200, 1, 8, 8), generator=g)).to(torch.uint8)
    spec = dataclasses.replace(SPECS["digits"], crop_padding=1, flip=True)  # augmenting: drift_augment reads it
    bench = Benchmark(spec, TensorImages(images, labels, spec, "cpu"), None, list(range(10)),
                      [range(0, 5), range(5, 10)])
    out = {{}}
    for name, keys in (("ldc", {{"sdc": True}}), ("adc", {{"adc_samples": 8}})):
        config = resolve({{"method": name, "backbone": "resnet8", "batch_size": 32, **keys}})
        torch.manual_seed(0)
        model = build_model("resnet8", 1, 8, head="cosine").eval()
        model.head.add_task(5)
        method = build_method(config, model, spec)
        statistics_pass(model, method, Task(0, range(0, 5), 2), bench, config, ddp)
        method.old_model = frozen_copy(model)
        with torch.no_grad():  # a drift: the new model is the old one slightly moved
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.head.add_task(5)
        method.incremental_phases(Task(1, range(5, 10), 2))  # LDC's (untrained) projector
        statistics_pass(model, method, Task(1, range(5, 10), 2), bench, config, ddp)
        out[name] = method.prototypes
    if ddp.is_main:
        torch.save(out, {out!r})
    ddp.close()
''')


def test_two_gloo_processes_give_the_prototypes_of_one(tmp_path):
    one, two = two_processes_and_one(tmp_path, SCRIPT, 29547)
    for name in ("ldc", "adc"):
        assert one[name].shape == (10, 64)
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-4)


def augmenting_bench():
    """Digits-shaped random images of 5 classes whose spec augments (padding 1, flip)."""
    import dataclasses
    from rdfcil.data import Benchmark, TensorImages
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(5).repeat_interleave(12)
    images = torch.randint(0, 256, (60, 1, 8, 8), generator=g).to(torch.uint8)
    spec = dataclasses.replace(SPECS["digits"], crop_padding=1, flip=True)
    return Benchmark(spec, TensorImages(images, labels, spec, "cpu"), None, list(range(5)), [range(0, 5)])


def test_the_statistics_pass_reads_augmented_images_alike_in_every_process():
    from rdfcil.distributed import Distributed
    from rdfcil.engine import statistics_batches
    bench, task = augmenting_bench(), Task(0, range(0, 5), 5)
    config = resolve({"method": "adc", "backbone": "resnet8", "batch_size": 16, "seed": 3})

    def images(batches, **kw):
        x, y = zip(*batches(**kw))
        return torch.cat(x), torch.cat(y)

    batches = statistics_batches(bench, task, config, Distributed())
    plain, labels = images(batches)
    torch.testing.assert_close(plain, bench.train.normalize(bench.train.images))  # fixed order, unaugmented
    first, first_labels = images(batches, augment=True)
    assert torch.equal(first_labels, labels) and first.shape == plain.shape
    assert (first - plain).abs().amax(dim=(1, 2, 3)).gt(1e-6).float().mean() > 0.5  # most images moved
    assert not torch.equal(images(batches, augment=True)[0], first)  # each call draws afresh
    again = statistics_batches(bench, task, config, Distributed())
    assert torch.equal(images(again, augment=True)[0], first)  # the same draw for the same (seed, task)
    for rank in (0, 1):  # a process's shard of each batch is that batch's augmentation in one process
        shard = statistics_batches(bench, task, config, Distributed(rank=rank, world=2))
        expected = torch.cat([b[rank::2] for b in first.split(16)])
        assert torch.equal(images(shard, augment=True)[0], expected)
    off = statistics_batches(bench, task, resolve({**config.to_dict(), "augment": False}), Distributed())
    assert torch.equal(images(off, augment=True)[0], plain)  # a run that does not augment never does


# --------------------------------------------------------------------------- presets, keys, a tiny run

def test_the_paper_preset_is_the_authors_lwf_schedule_and_names_the_departures():
    values = preset_values("paper", "cifar100", "ldc")
    assert (values["epochs"], values["milestones"], values["lr"], values["weight_decay"]) == \
        (200, [60, 120, 160], 0.1, 5e-4)
    assert (values["drift_epochs"], values["drift_milestones"], values["lr_incremental"],
            values["drift_weight_decay"]) == (100, [45, 90], 0.05, 2e-4)
    assert (values["drift_lamda"], values["kd_temperature"], values["backbone"], values["refinement_epochs"]) == \
        (10.0, 2.0, "resnet18", 0)
    assert "AutoAugment" in values["notes"] and "ColorJitter" in values["notes"]
    adc = preset_values("paper", "cifar100", "adc")
    assert (adc["adc_alpha"], adc["adc_steps"], adc["adc_samples"], adc["ldc_epochs"], adc["ldc_lr"]) == \
        (25.0, 3, 100, 20, 1e-3)
    assert "drift methods" in preset_values("quick", "digits", "ldc")["notes"]
    assert resolve({"method": "adc", "preset": "paper", "dataset": "cifar100"}).drift_augment is True
    assert "drift_augment" in values["notes"] and "drift_augment" in preset_values("paper", "cifar100", "efc")["notes"]
    assert METHODS["ldc"].family == METHODS["adc"].family == "drift"


@pytest.mark.parametrize("key, value, message", [("adc_steps", 0, "adc_steps must be a positive integer"),
                                                 ("ldc_lr", 0, "ldc_lr must be positive"),
                                                 ("drift_milestones", [0], "drift_milestones must be")])
def test_bad_values_of_the_drift_keys_are_refused_in_one_line(key, value, message):
    with pytest.raises(RdfcilError, match=message):
        resolve({"method": "ldc", key: value})


TINY = {"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 4, "refinement_epochs": 0,
        "milestones": [3], "batch_size": 32, "train_per_class": 40, "progress": False, "logger": "none",
        "device": TEST_DEVICE, "ldc_epochs": 5}


@pytest.mark.parametrize("name", ["ldc", "adc"])
def test_a_tiny_digits_run_is_above_chance_and_resumes_from_the_state(name):
    torch.manual_seed(0)
    config = resolve({**TINY, "method": name})
    bench = load_benchmark(config, TEST_DEVICE)
    model = model_for(config, bench.spec, TEST_DEVICE)
    m = build_method(config, model, bench.spec)
    for t in range(2):
        timings, history = run_task(model, m, Task(t, bench.tasks[t], 2), bench, config, None, None)
    confusion = history["confusion"]
    accuracy = np.trace(confusion) / confusion.sum()
    new = np.trace(confusion[5:, 5:]) / confusion[5:].sum()
    assert accuracy > 0.3 and new > 0.2, (accuracy, new)  # 10 classes: chance 0.1
    assert set(timings) == {"train", "statistics", "eval"} | ({"projector"} if name == "ldc" else set())
    fresh = build_method(config, model, bench.spec)
    fresh.load_state_dict(m.state_dict(), Task(1, bench.tasks[1], 2))
    x, _ = next(bench.test.batches(range(0, 10), 64))
    with torch.no_grad():
        assert torch.equal(fresh.scores(x), m.scores(x))
