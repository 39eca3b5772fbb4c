"""The analytic heads (ACIL, DS-AL): the mathematics, not only that it runs."""

import math
import textwrap

import numpy as np
import pytest
import torch

from conftest import two_processes_and_one
import torch.nn.functional as F

from rdfcil.analytic import (AnalyticClassifier, DualStreamClassifier, RandomExpansion, bench_update, chunks,
                             recursive_update)

META = torch.device("meta")


def rls(R, W, X, Y):
    """The authors' recursive least squares on one batch (ACIL equations 9-10), float64."""
    if Y.shape[1] > W.shape[1]:
        W = F.pad(W, (0, Y.shape[1] - W.shape[1]))
    K = torch.linalg.inv(torch.eye(len(X), dtype=X.dtype) + X @ R @ X.T)
    R = R - R @ X.T @ K @ X @ R
    return R, W + R @ X.T @ (Y - X @ W)


def split(num_classes, num_tasks):
    """Classes 0..num_classes-1 into num_tasks consecutive ranges (the first takes the remainder)."""
    base = num_classes - (num_tasks - 1) * (num_classes // num_tasks)
    bounds = [0, base] + [base + i * (num_classes // num_tasks) for i in range(1, num_tasks)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def task_data(generator, classes, per_class=7, dim=6):
    labels = torch.tensor([c for c in classes for _ in range(per_class)])
    features = torch.randn(len(labels), dim, generator=generator, dtype=torch.float64) + labels[:, None] * 0.3
    return features, labels


@pytest.mark.parametrize("num_tasks", [1, 2, 4, 7])
@pytest.mark.parametrize("chunk", [5, 1000])
def test_acil_after_any_number_of_tasks_is_ridge_regression_on_every_feature(num_tasks, chunk):
    """ACIL's defining property: T tasks of chunks give the closed-form ridge regression on all
    the features seen, and the authors' RLS recursion over the same chunks gives it too."""
    generator = torch.Generator().manual_seed(num_tasks)
    gamma, size, num_classes = 0.1, 20, 8
    head = AnalyticClassifier(6, size, gamma, seed=3, device="cpu")
    R, W = torch.eye(size, dtype=torch.float64) / gamma, torch.zeros(size, 0, dtype=torch.float64)
    seen_x, seen_y = [], []
    for classes in split(num_classes, num_tasks):
        features, labels = task_data(generator, classes)
        for f, y in chunks(zip(features.split(chunk), labels.split(chunk)), 1):
            head.fit(f, y, classes)
            X = torch.relu(f @ head.expansion.weight.T)
            R, W = rls(R, W, X, F.one_hot(y, classes.stop).double())
        head.finish()
        seen_x.append(features)
        seen_y.append(labels)
    X = np.maximum(torch.cat(seen_x).numpy() @ head.expansion.weight.numpy().T, 0)
    Y = np.eye(num_classes)[torch.cat(seen_y).numpy()]
    ridge = np.linalg.solve(gamma * np.eye(size) + X.T @ X, X.T @ Y)
    assert head.main.weight.dtype == torch.float64 and head.main.weight.shape == (size, num_classes)
    assert np.abs(head.main.weight.numpy() - ridge).max() < 1e-6
    assert (W - head.main.weight).abs().max() < 1e-6
    assert np.abs(ridge).max() > 1e-2  # not trivially zero


def test_acil_predictions_do_not_depend_on_the_number_of_tasks():
    generator = torch.Generator().manual_seed(0)
    features, labels = task_data(generator, range(9))
    scores = []
    for num_tasks in (1, 3, 5):
        head = AnalyticClassifier(6, 16, 0.1, seed=0)
        for classes in split(9, num_tasks):
            mask = (labels >= classes.start) & (labels < classes.stop)
            head.fit(features[mask], labels[mask], classes)
            head.finish()
        scores.append(head(features))
    assert (scores[0] - scores[1]).abs().max() < 1e-9 and (scores[0] - scores[2]).abs().max() < 1e-9


def test_dsal_compensation_stream_by_hand():
    """One expanded unit (W_B = [[1]]), gamma = gamma_comp = 1, C = 0.5; t1 = tanh 1, t2 = tanh 2.

    Task 0, class 0, f = 1: main A = 1 + 1 = 2, B = [1], W = [1/2]; residual 1 - 1/2 = 1/2, no
    previous class; comp A = 1 + t1^2, B = [t1/2].
    Task 1, class 1, f = 2: main A = 2 + 4 = 6, B = [1, 2], W = [1/6, 1/3]; residual
    [0, 1] - 2 [1/6, 1/3] = [-1/3, 1/3], cleansed to [0, 1/3]; comp A = 1 + t1^2 + t2^2 = 2.509375,
    B = [t1/2, t2/3] = [0.380797, 0.321343], W = [0.151750, 0.128057].
    Scores main + C comp at f = 1: [1/6 + t1 0.151750 / 2, 1/3 + t1 0.128057 / 2] = [0.224453, 0.382097];
    at f = -1 (ReLU 0, tanh -t1): [-0.057786, -0.048764]."""
    head = DualStreamClassifier(1, 1, gamma=1.0, seed=0, gamma_comp=1.0, compensation=0.5)
    head.expansion.weight.fill_(1.0)
    for f, y, classes in ((1.0, 0, range(0, 1)), (2.0, 1, range(1, 2))):
        head.fit(torch.tensor([[f]]), torch.tensor([y]), classes)
        head.finish()
    assert head.main.weight.flatten().tolist() == pytest.approx([1 / 6, 1 / 3], abs=1e-12)
    assert head.comp.autocorrelation.item() == pytest.approx(2.509375, abs=1e-6)
    assert head.comp.crosscorrelation.flatten().tolist() == pytest.approx([0.380797, 0.321343], abs=1e-6)
    assert head.comp.weight.flatten().tolist() == pytest.approx([0.151750, 0.128057], abs=1e-6)
    scores = head(torch.tensor([[1.0], [-1.0]]))
    assert scores.tolist() == [pytest.approx([0.224453, 0.382097], abs=1e-6),
                               pytest.approx([-0.057786, -0.048764], abs=1e-6)]
    assert math.tanh(1.0) / 2 == pytest.approx(0.380797, abs=1e-6)


@pytest.mark.parametrize("chunk", [4, 1000])
def test_dsal_equals_the_authors_recursion_over_the_same_chunks(chunk):
    """Main stream by RLS, solved before each chunk's residual; compensation stream by RLS on
    tanh of the cleansed residual: the authors' DSAL.fit, chunk for chunk."""
    generator = torch.Generator().manual_seed(1)
    size, g_main, g_comp = 12, 0.1, 0.3
    head = DualStreamClassifier(6, size, g_main, seed=5, gamma_comp=g_comp, compensation=0.6)
    Rm, Wm = torch.eye(size, dtype=torch.float64) / g_main, torch.zeros(size, 0, dtype=torch.float64)
    Rc, Wc = torch.eye(size, dtype=torch.float64) / g_comp, torch.zeros(size, 0, dtype=torch.float64)
    for classes in split(7, 3):
        features, labels = task_data(generator, classes)
        order = torch.randperm(len(labels), generator=generator)
        features, labels = features[order], labels[order]
        for f, y in zip(features.split(chunk), labels.split(chunk)):
            head.fit(f, y, classes)
            X = f @ head.expansion.weight.T
            Y = F.one_hot(y, classes.stop).double()
            Rm, Wm = rls(Rm, Wm, torch.relu(X), Y)
            residual = Y - torch.relu(X) @ Wm
            residual[:, :classes.start] = 0
            Rc, Wc = rls(Rc, Wc, torch.tanh(X), residual)
        head.finish()
    assert (head.main.weight - Wm).abs().max() < 1e-6 and (head.comp.weight - Wc).abs().max() < 1e-6
    assert Wc.abs().max() > 1e-3
    f = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    X = f @ head.expansion.weight.T
    assert (head(f) - (torch.relu(X) @ Wm + 0.6 * torch.tanh(X) @ Wc)).abs().max() < 1e-6


def test_two_processes_sum_to_one():
    """Under torchrun each process adds its rows and ``reduce`` sums: simulated by adding the
    other shard's contribution, the two-process sums equal the one-process ones."""
    generator = torch.Generator().manual_seed(2)
    features, labels = task_data(generator, range(4))
    one = AnalyticClassifier(6, 10, 0.1, seed=1)
    one.fit(features, labels, range(4))
    one.finish()
    other = AnalyticClassifier(6, 10, 0.1, seed=1)
    X1 = torch.relu(other.expansion(features[1::2]))
    Y1 = F.one_hot(labels[1::2], 4).double()
    partner = iter([X1.T @ X1, X1.T @ Y1])
    other.fit(features[0::2], labels[0::2], range(4), reduce=lambda t: t + next(partner))
    other.finish()
    assert (one.main.weight - other.main.weight).abs().max() < 1e-10


def test_the_benchmarked_recursive_update_is_the_ridge_solution():
    """``recursive_update`` (what ``bench_update(recursive=True)`` times) over two batches gives
    the ridge regression of the head ``bench_update`` times by default."""
    generator = torch.Generator().manual_seed(4)
    x, labels = torch.rand(30, 16, generator=generator, dtype=torch.float64), torch.arange(30) % 3
    y = F.one_hot(labels, 3).double()
    R, W = torch.eye(16, dtype=torch.float64) / 0.1, torch.zeros(16, 3, dtype=torch.float64)
    for rows in (slice(0, 12), slice(12, 30)):
        R, W = recursive_update(R, W, x[rows], y[rows])
    ridge = torch.linalg.solve(0.1 * torch.eye(16, dtype=torch.float64) + x.T @ x, x.T @ y)
    assert (W - ridge).abs().max() < 1e-9 and (R @ (0.1 * torch.eye(16) + x.T @ x) - torch.eye(16)).abs().max() < 1e-6
    for recursive in (False, True):
        timing = bench_update(32, batch=64, classes=5, feature_dim=8, recursive=recursive)
        assert set(timing) == {"seconds", "cpu_seconds"} and timing["seconds"] > 0


def test_expansion_is_seeded_and_bounded():
    a, b, c = (RandomExpansion(64, 128, seed, "cpu").weight for seed in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float64 and a.abs().max() <= 1 / 8 and a.abs().max() > 0.12


def test_chunks_count_batches():
    batches = [(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long)) for n in (3, 3, 3, 1)]
    assert [len(y) for _, y in chunks(batches, 2)] == [6, 4]
    assert [len(y) for _, y in chunks(batches, 10)] == [10]


@pytest.mark.parametrize("dual", [False, True])
def test_analytic_heads_and_statistics_are_on_the_device(dual):
    head = (DualStreamClassifier(64, 32, 0.1, 0, 0.1, 0.6, device=META) if dual
            else AnalyticClassifier(64, 32, 0.1, 0, device=META))
    head.fit(torch.empty(8, 64, device=META), torch.zeros(8, dtype=torch.long, device=META), range(0, 5))
    head.finish()
    scores = head(torch.empty(3, 64, device=META))
    assert scores.shape == (3, 5) and scores.device == META
    assert [name for name, t in head.named_buffers() if t.device != META] == []


# -- the methods ------------------------------------------------------------------------------

from rdfcil import run  # noqa: E402
from rdfcil.config import resolve  # noqa: E402
from rdfcil.data import SPECS  # noqa: E402
from rdfcil.methods import METHODS, Task, build_method  # noqa: E402
from rdfcil.nets import build_model  # noqa: E402

TINY = {"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 2, "refinement_epochs": 0,
        "milestones": [1], "batch_size": 64, "analytic_buffer": 128, "analytic_batch": 200,
        "progress": False, "device": "cpu"}


def image_batches(generator, classes, n=3, size=5, device="cpu"):
    labels = [torch.randint(classes.start, classes.stop, (size,), generator=generator) for _ in range(n)]
    return lambda: iter([(torch.randn(size, 1, 8, 8, generator=generator).to(device), y.to(device)) for y in labels])


def test_dsal_runs_the_base_task_then_statistics_only(tmp_path):
    results = run(resolve({**TINY, "method": "dsal", "train_per_class": 40, "out": str(tmp_path)}))
    assert METHODS["dsal"].classifier == "analytic, dual stream (RLS)" and METHODS["acil"].classifier == "analytic (RLS)"
    first, second = results.wall_seconds
    assert set(first) == {"base", "statistics", "eval"} and set(second) == {"statistics", "eval"}
    assert results.accuracy_matrix[0][0] > 60 and results.final_accuracy > 40  # 10 classes: chance is 10 %


@pytest.mark.parametrize("method", ["acil", "dsal"])
def test_the_analytic_head_is_restored_from_the_checkpoint(method):
    config = resolve({**TINY, "method": method})
    model = build_model(config.backbone, 1, 8)
    m = build_method(config, model, SPECS["digits"])
    generator = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        for task in (Task(0, range(0, 5), 2), Task(1, range(5, 10), 2)):
            m.statistics(task, image_batches(generator, task.classes), lambda t: t)
        x = torch.randn(4, 1, 8, 8, generator=generator)
        state = m.state_dict()
        restored = build_method(config, model, SPECS["digits"])
        restored.load_state_dict(state, Task(1, range(5, 10), 2))
        assert m.scores(x).shape == (4, 10) and torch.equal(restored.scores(x), m.scores(x))
    assert m.head.main.weight.abs().max() > 0


@pytest.mark.parametrize("method", ["acil", "dsal"])
def test_analytic_methods_place_their_head_on_the_device(method):
    config = resolve({**TINY, "method": method})
    model = build_model(config.backbone, 1, 8, META)
    m = build_method(config, model, SPECS["digits"])
    generator = torch.Generator().manual_seed(0)
    task = Task(0, range(0, 5), 2)
    m.statistics(task, image_batches(generator, task.classes, device=META), lambda t: t)
    assert [name for name, t in m.head.named_buffers() if t.device != META] == []
    scores = m.scores(torch.empty(2, 1, 8, 8, device=META))
    assert scores.shape == (2, 5) and scores.device == META
    assert m.incremental_phases(Task(1, range(5, 10), 2)) == [] and m.needs_statistics(task)


def test_published_analytic_numbers_keep_their_protocol_and_classifier():
    from rdfcil.paper import published, published_records
    acil = published("cifar100", "acil", 6, 50)
    assert acil["avg"] == 66.30 and acil["last"] is None and acil["protocol"] is None
    assert acil["classifier"] == METHODS["acil"].classifier
    assert published("cifar100", "dsal", 51, 50)["last"] == 58.37
    assert published("cifar100", "dsal", 51, 50)["classifier"] == METHODS["dsal"].classifier
    records = published_records("cifar100", "acil", 26, 50)
    assert [r["avg"] for r in records] == [65.95, 71.047]  # the lab's protocol first, the README's after
    assert records[0]["protocol"] is None and "TrivialAugmentWide" in records[1]["protocol"]
    assert published("cifar100", "acil", 26, 50)["avg"] == 65.95


SCRIPT = textwrap.dedent('''
    import torch
    from rdfcil.config import resolve
    from rdfcil.data import load_benchmark
    from rdfcil.distributed import Distributed
    from rdfcil.engine import statistics_pass
    from rdfcil.methods import Task, build_method
    from rdfcil.nets import model_for
    ddp = Distributed.from_env("cpu")
    torch.manual_seed(0)
    config = resolve({config!r})
    bench = load_benchmark(config, "cpu")
    model = model_for(config, bench.spec, "cpu")
    model.head.add_task(5)
    method = build_method(config, model, bench.spec)
    for t in range(2):
        statistics_pass(model, method, Task(t, bench.tasks[t], 2), bench, config, ddp)
    if ddp.is_main:
        torch.save(method.head.state_dict(), {out!r})
    ddp.close()
''')


def test_dsal_under_two_gloo_processes_equals_one(tmp_path):
    """Chunks of 3 batches of 24 images (7 batches a task, the last one short): every process
    closes the same chunks, and the sums reduced per chunk give one process's heads."""
    config = {**TINY, "method": "dsal", "train_per_class": 30, "batch_size": 24, "analytic_batch": 72}
    one, two = two_processes_and_one(tmp_path, SCRIPT, 29541, config=config)
    assert one["comp.weight"].shape == (128, 10) and one["comp.weight"].abs().max() > 1e-3
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-7, atol=1e-9)
