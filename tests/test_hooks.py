"""The two extension points of a method: its scores (what ``evaluate`` predicts from) and the
task-end statistics pass (with its torchrun reduction), a head-only phase on supplied
features, and tasks with no phase at all."""

import os
import textwrap

import numpy as np
import torch

import rdfcil
from rdfcil.config import resolve
from rdfcil.data import load_benchmark
from rdfcil.engine import evaluate, run_task
from rdfcil.methods import Method, Phase, Task
from rdfcil.nets import model_for
from conftest import TEST_DEVICE, two_processes_and_one

TINY = {"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 2, "refinement_epochs": 0,
        "milestones": [1], "batch_size": 32, "train_per_class": 40, "progress": False, "logger": "none",
        "device": TEST_DEVICE, "method": "finetune"}


def setup(**overrides):
    torch.manual_seed(0)
    config = resolve({**TINY, **overrides})
    bench = load_benchmark(config, TEST_DEVICE)
    return config, bench, model_for(config, bench.spec, TEST_DEVICE)


class Constant(Method):
    """Scores every image as class 2."""
    name = "constant-test"

    def scores(self, x):
        s = torch.zeros(len(x), self.model.head.num_classes, device=x.device)
        s[:, 2] = 1.0
        return s


def test_evaluate_predicts_from_the_methods_scores():
    config, bench, model = setup()
    model.head.add_task(5)
    seen = range(0, 5)
    confusion = evaluate(model, bench, seen, 64, method=Constant(config, model, bench.spec))
    n_test = len(bench.test.indices(seen))
    assert confusion[:, 2].sum() == n_test and confusion.sum() == n_test  # every prediction is class 2
    # without a method (the old call) and with the default scores: the model's logits
    x, y = next(bench.test.batches(seen, 10_000))
    with torch.no_grad():
        direct = torch.as_tensor(np.bincount((y * 5 + model(x).argmax(1)).cpu().numpy(), minlength=25).reshape(5, 5))
    assert np.array_equal(evaluate(model, bench, seen, 64), direct.numpy())
    assert np.array_equal(evaluate(model, bench, seen, 64, method=Method(config, model, bench.spec)), direct.numpy())
    assert Method.classifier == "linear head" and Constant.classifier == "linear head"


class ClassSums(Method):
    """Statistics from sums: per class the count, the feature sum and the sum of outer products
    (each task's classes added to the earlier ones). Records what the engine hands it."""
    name = "class-sums-test"

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.calls, self.events = [], []

    def needs_statistics(self, task):
        return True

    def statistics(self, task, batches, reduce):
        self.events.append(("statistics", task.index))
        d, n = self.model.feature_dim, task.classes.stop
        count = torch.zeros(n, device=self.model.device, dtype=torch.float64)
        total = torch.zeros(n, d, device=self.model.device, dtype=torch.float64)
        outer = torch.zeros(n, d, d, device=self.model.device, dtype=torch.float64)
        for x, y in batches():
            self.calls.append(dict(device=x.device, grad=torch.is_grad_enabled(), training=self.model.training,
                                   labels=y.tolist(), size=len(x)))
            f = self.model.features(x).double()
            count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
            total.index_add_(0, y, f)
            outer.index_add_(0, y, f[:, :, None] * f[:, None, :])
        count, total, outer = reduce(count), reduce(total), reduce(outer)
        if task.index:
            n_old = task.n_old
            count[:n_old], total[:n_old], outer[:n_old] = self.count, self.total, self.outer
        self.count, self.total, self.outer = count, total, outer

    def end_task(self, task, progress_factory=None, check=None):
        self.events.append(("end_task", task.index))
        return super().end_task(task, progress_factory, check)


def test_the_statistics_pass_reads_the_tasks_images_once_without_gradients_on_the_device():
    config, bench, model = setup()
    method = ClassSums(config, model, bench.spec)
    task = Task(0, bench.tasks[0], 2)
    timings, _ = run_task(model, method, task, bench, config, None, None)
    assert method.events == [("statistics", 0), ("end_task", 0)] and "statistics" in timings
    calls = method.calls
    assert all(c["device"].type == torch.device(TEST_DEVICE).type for c in calls)
    assert not any(c["grad"] or c["training"] for c in calls)
    labels = [label for c in calls for label in c["labels"]]
    assert sorted(labels) == sorted(bench.train.labels[bench.train.indices(task.classes)].tolist())  # once each
    assert [c["size"] for c in calls[:-1]] == [config.batch_size] * (len(calls) - 1)
    assert labels == bench.train.labels[bench.train.indices(task.classes)].tolist()  # fixed order
    # unaugmented: the sums equal a direct computation on the normalised images
    x = bench.train.normalize(bench.train.images[bench.train.indices(task.classes)])
    y = bench.train.labels[bench.train.indices(task.classes)]
    with torch.no_grad():
        f = model.features(x).double()
    for c in task.classes:
        assert method.count[c] == (y == c).sum()
        torch.testing.assert_close(method.total[c], f[y == c].sum(0))
        torch.testing.assert_close(method.outer[c], f[y == c].T @ f[y == c])


SCRIPT = textwrap.dedent('''
    import sys, torch
    from rdfcil.config import Config
    from rdfcil.data import SPECS, Benchmark, TensorImages
    from rdfcil.distributed import Distributed
    from rdfcil.engine import statistics_pass
    from rdfcil.methods import FeCAM, NCM, Task
    from rdfcil.nets import build_model
    sys.path.insert(0, {tests!r})
    from test_hooks import ClassSums
    ddp = Distributed.from_env("cpu")
    g = torch.Generator().manual_seed(0)  # 5 classes x 40 random 8x8 images, without loading a dataset
    labels = torch.arange(5).repeat_interleave(40)
    images = (labels.view(-1, 1, 1, 1) * 40 + torch.randint(0, 60, (200, 1, 8, 8), generator=g)).to(torch.uint8)
    spec = SPECS["digits"]
    bench = Benchmark(spec, TensorImages(images, labels, spec, "cpu"), None, list(range(5)), [range(0, 5)])
    config = Config(batch_size=32)
    torch.manual_seed(0)
    model = build_model("resnet8", 1, 8).eval()
    model.head.add_task(5)
    method, fecam, ncm = (cls(config, model, spec) for cls in (ClassSums, FeCAM, NCM))
    for m in (method, fecam, ncm):
        statistics_pass(model, m, Task(0, range(0, 5), 1), bench, config, ddp)
    if ddp.is_main:
        torch.save(dict(count=method.count, total=method.total, outer=method.outer,
                        sizes=[c["size"] for c in method.calls], fecam_means=fecam.means,
                        fecam_precisions=fecam.precisions, ncm_means=ncm.means), {out!r})
    ddp.close()
''')


def test_two_gloo_processes_give_the_statistics_of_one(tmp_path):
    one, two = two_processes_and_one(tmp_path, SCRIPT, 29531, tests=os.path.dirname(__file__))
    assert two["sizes"][0] == one["sizes"][0] // 2  # each process read half of each batch
    assert torch.equal(one["count"], two["count"]) and one["count"].sum() == 200
    torch.testing.assert_close(two["total"], one["total"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(two["outer"], one["outer"], rtol=1e-5, atol=1e-6)
    for key in ("fecam_means", "fecam_precisions", "ncm_means"):  # the methods' statistics too
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-4)


class FrozenWithFeatureHead(ClassSums):
    """After the base task: no SGD on images; the statistics pass keeps the task's features;
    a head-only phase trains a fresh linear on them."""
    name = "feature-head-test"

    def __init__(self, config, model, spec):
        super().__init__(config, model, spec)
        self.shapes = []

    def statistics(self, task, batches, reduce):
        super().statistics(task, batches, reduce)
        pairs = [(self.model.features(x), y) for x, y in batches(shard=False)]
        self.features = torch.cat([f for f, _ in pairs])
        self.labels = torch.cat([y for _, y in pairs])

    def incremental_phases(self, task):
        linear = torch.nn.Linear(self.model.feature_dim, task.classes.stop, device=self.model.device)
        self.linear = linear

        def batches(generator):
            self.events.append(("feature batches", task.index))
            order = torch.randperm(len(self.labels), generator=generator).to(self.labels.device)
            for i in range(0, len(order) - 15, 16):
                yield self.features[order[i:i + 16]], self.labels[order[i:i + 16]]

        def loss(x, y):
            self.shapes.append(tuple(x.shape))
            return {"ce": torch.nn.functional.cross_entropy(linear(x), y)}
        return [Phase("head", 30, 0.1, list(linear.parameters()), loss, task.classes, train_backbone=False,
                      modules=[linear], batches=batches, num_batches=lambda: len(self.labels) // 16)]

    def scores(self, x):
        return self.linear(self.model.features(x)) if hasattr(self, "linear") else self.model(x)


def test_a_head_only_phase_trains_on_the_features_the_method_supplies():
    config, bench, model = setup()
    method = FrozenWithFeatureHead(config, model, bench.spec)
    run_task(model, method, Task(0, bench.tasks[0], 2), bench, config, None, None)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    task = Task(1, bench.tasks[1], 2)
    timings, history = run_task(model, method, task, bench, config, None, None)
    assert method.events[2:] == [("statistics", 1), ("feature batches", 1)] + [("feature batches", 1)] * 29 + \
        [("end_task", 1)]  # the features exist before the phase draws them; one draw per epoch
    n = len(bench.train.indices(task.classes))
    assert set(method.shapes) == {(16, model.feature_dim)} and len(method.shapes) == 30 * (n // 16)
    assert history["steps"] == 30 * (n // 16) and len(history["phases"]["head"]["ce"]) == 30
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())  # BN frozen too
    accuracy = np.trace(history["confusion"][5:, 5:]) / history["confusion"][5:].sum()
    assert accuracy > 0.5  # new classes from the feature head (chance over 10 classes: 0.1)


class FrozenAfterBase(ClassSums):
    """No phase after the base task (a frozen backbone); nearest class mean scores."""
    name = "frozen-test"

    def incremental_phases(self, task):
        return []

    def scores(self, x):
        means = (self.total / self.count[:, None]).float()
        return -torch.cdist(self.model.features(x), means)

    def state_dict(self):
        return {"count": self.count, "total": self.total}


def test_a_task_without_phases_runs_through_the_engine(tmp_path, monkeypatch):
    from rdfcil.methods import base
    monkeypatch.setitem(base.METHODS, "frozen-test", FrozenAfterBase)
    results = rdfcil.run({**TINY, "method": "frozen-test", "out": str(tmp_path / "run")})
    assert results.finished and len(results.accuracy_matrix) == 2
    base_steps = 2 * (5 * 40 // 32)
    assert results.train_steps == base_steps  # task 1 trained nothing
    assert set(results.wall_seconds[1]) == {"statistics", "eval"}
    assert results.accuracy_matrix[1][1] > 40.0  # the new classes by their means: chance over 10 is 10 %
    checkpoint = torch.load(tmp_path / "run" / "task_1.pt", weights_only=False)
    assert checkpoint["method"]["count"].tolist() == [40.0] * 10
