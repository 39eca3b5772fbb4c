"""The frozen-backbone methods NCM, FeCAM and FeTrIL: their mathematics against hand and numpy
computations, their tensors on the ``meta`` device, and a tiny digits run above chance."""

import numpy as np
import pytest
import torch

from rdfcil.config import resolve
from rdfcil.data import SPECS, load_benchmark
from rdfcil.engine import run_task
from rdfcil.errors import RdfcilError
from rdfcil.methods import METHODS, Task, build_method
from rdfcil.methods.fecam import FeCAM, tukey
from rdfcil.methods.fetril import FeTrIL, fit_linear_svm, nearest_new_class, pseudo_features
from rdfcil.methods.ncm import NCM
from rdfcil.nets import build_model, model_for
from conftest import TEST_DEVICE

META = torch.device("meta")


class Identity(torch.nn.Module):
    """A stand-in model whose features are its inputs (B, d): the statistics see what the test sets."""

    def __init__(self, d: int, device="cpu"):
        super().__init__()
        self.feature_dim = d
        self.anchor = torch.nn.Parameter(torch.zeros(0, device=device))

    @property
    def device(self):
        return self.anchor.device

    def features(self, x):
        return x


def batches_of(x, y, size=3):
    """``batches()`` as the engine hands it: fixed order, ``size`` rows per batch."""
    def batches(shard=True, augment=False):
        for i in range(0, len(y), size):
            yield x[i:i + size], y[i:i + size]
    return batches


def method(cls, d, **keys):
    return cls(resolve({"method": cls.name, **keys}), Identity(d), SPECS["digits"])


def identity(t):
    return t


# --------------------------------------------------------------------------- NCM

def test_ncm_scores_are_minus_the_normalised_distances_computed_by_hand():
    ncm = method(NCM, 2)
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    ncm.statistics(Task(0, range(0, 2), 2), batches_of(x, torch.tensor([0, 0, 1, 1])), identity)
    torch.testing.assert_close(ncm.means, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    scores = ncm.scores(torch.tensor([[2.0, 1.0]]))
    cos0, cos1 = 2 / 5 ** 0.5, 1 / 5 ** 0.5  # ||a - b||^2 = 2 - 2 cos for unit vectors
    torch.testing.assert_close(scores, -torch.tensor([[2 - 2 * cos0, 2 - 2 * cos1]]), atol=1e-6, rtol=0)
    # a second task appends its means and keeps the old ones
    ncm.statistics(Task(1, range(2, 3), 2), batches_of(torch.tensor([[-1.0, -1.0], [-3.0, -3.0]]),
                                                       torch.tensor([2, 2])), identity)
    torch.testing.assert_close(ncm.means, torch.tensor([[2.0, 0.0], [0.0, 3.0], [-2.0, -2.0]]))
    assert ncm.scores(torch.tensor([[-1.0, -0.5]])).argmax(1).item() == 2


# --------------------------------------------------------------------------- FeCAM

def numpy_fecam_distance(train: np.ndarray, labels: np.ndarray, test: np.ndarray, beta=0.5, a1=1.0, a2=1.0,
                         twice=True) -> np.ndarray:
    """FeCAM written directly from the authors' code in numpy (signed Tukey for the negative
    features): (N_test, C)."""
    def t(v):
        return np.sign(v) * np.abs(v) ** beta

    def shrink(cov):
        d = len(cov)
        off = cov - np.diag(np.diag(cov))
        off_mean = off[off != 0].mean()
        return cov + a1 * np.mean(np.diag(cov)) * np.eye(d) + a2 * off_mean * (1 - np.eye(d))

    out = []
    for c in np.unique(labels):
        rows = train[labels == c]
        cov = shrink(np.cov(t(rows).T))
        cov = shrink(cov) if twice else cov
        sd = np.sqrt(np.diag(cov))
        precision = np.linalg.pinv(cov / np.outer(sd, sd))
        mu = t(rows.mean(0))
        mu = mu / np.linalg.norm(mu)
        x = test / (np.linalg.norm(test, axis=1, keepdims=True) + 1e-8)
        x = t(x)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        diff = x - mu
        out.append(np.einsum("nd,de,ne->n", diff, precision, diff))
    return np.stack(out, 1)


@pytest.mark.parametrize("twice", [True, False])
def test_fecam_distances_equal_a_direct_numpy_computation(twice):
    rng = np.random.default_rng(0)
    d, per_class = 5, 12
    train = np.concatenate([rng.normal(loc=c, scale=1.0 + c, size=(per_class, d)) for c in range(3)])
    labels = np.repeat(np.arange(3), per_class)
    test = rng.normal(size=(7, d))
    fecam = method(FeCAM, d, fecam_shrink_twice=twice)
    x, y = torch.tensor(train, dtype=torch.float32), torch.tensor(labels)
    fecam.statistics(Task(0, range(0, 2), 2), batches_of(x[y < 2], y[y < 2], 5), identity)
    fecam.statistics(Task(1, range(2, 3), 2), batches_of(x[y == 2], y[y == 2], 5), identity)
    expected = numpy_fecam_distance(train, labels, test, twice=twice)
    scores = fecam.scores(torch.tensor(test, dtype=torch.float32))
    assert (train < 0).any() and torch.isfinite(scores).all()  # negative features, no NaN
    np.testing.assert_allclose(-scores.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert (scores.argmax(1).numpy() == expected.argmin(1)).all()


def test_fecam_scores_task_0_by_the_heads_rows_as_the_authors_do():
    model = build_model("resnet8", 1, 8).eval()
    model.head.add_task(3)
    fecam = FeCAM(resolve({"method": "fecam"}), model, SPECS["digits"])
    x = torch.randn(6, 1, 8, 8)
    fecam.statistics(Task(0, range(0, 3), 2), batches_of(x, torch.tensor([0, 1, 2, 0, 1, 2])), identity)
    with torch.no_grad():
        f = model.features(x)
        cosine = torch.nn.functional.normalize(f, dim=1) @ torch.nn.functional.normalize(model.head.weight, dim=1).T
        torch.testing.assert_close(fecam.scores(x), -(2 - 2 * cosine), atol=1e-5, rtol=0)


def test_tukey_signed_equals_the_power_where_it_is_defined_and_is_never_nan():
    x = torch.tensor([-4.0, -0.25, 0.0, 0.25, 4.0])
    signed = tukey(x, 0.5, "signed")
    torch.testing.assert_close(signed, torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0]))
    torch.testing.assert_close(signed[2:], tukey(x[2:], 0.5, "power"))
    assert torch.equal(tukey(x, 0.5, "none"), x)
    fecam = method(FeCAM, 2, fecam_tukey="power", resnet_variant="standard")
    with pytest.raises(RdfcilError, match="negative feature"):
        fecam.statistics(Task(0, range(0, 1), 2), batches_of(x[:4].view(2, 2), torch.tensor([0, 0])), identity)
    with pytest.raises(RdfcilError, match="fecam_tukey power .* published ResNet"):
        resolve({"method": "fecam", "fecam_tukey": "power"})


# --------------------------------------------------------------------------- FeTrIL

def test_fetril_pseudo_features_equal_a_hand_computation():
    # old classes 0 (mean (4, 4)) and 1 (mean (10, 0)); new classes 2 and 3
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [9.0, 9.0], [11.0, 11.0]])
    labels = torch.tensor([2, 2, 3, 3])
    means = torch.tensor([[4.0, 4.0], [10.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    # Euclidean (authors): class 0 -> class 2 (|(2,-4)| < |(6,6)|), class 1 -> class 2 (8 < 10)
    pseudo, pseudo_labels = pseudo_features(features, labels, means, 2, "euclidean")
    torch.testing.assert_close(pseudo, torch.tensor([[3.0, 4.0], [5.0, 4.0], [9.0, 0.0], [11.0, 0.0]]))
    assert pseudo_labels.tolist() == [0, 0, 1, 1]
    # cosine (PyCIL): class 0 -> class 3 (same direction), class 1 -> class 2 (same direction)
    pseudo, _ = pseudo_features(features, labels, means, 2, "cosine")
    torch.testing.assert_close(pseudo, torch.tensor([[3.0, 3.0], [5.0, 5.0], [9.0, 0.0], [11.0, 0.0]]))


@pytest.mark.parametrize("classes", [2, 3])
def test_fetril_svm_separates_separable_classes_and_keeps_a_row_per_class(classes):
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])[:classes]
    y = torch.arange(classes).repeat_interleave(20)
    x = centres[y] + torch.randn(len(y), 2, generator=g)
    weights, biases = fit_linear_svm(x, y, classes, 1.0, 1e-4)
    assert weights.shape == (classes, 2) and biases.shape == (classes,)
    predictions = (x.double().numpy() @ weights.T + biases).argmax(1)
    assert (predictions == y.numpy()).all()


def test_fetril_trains_its_classifier_on_real_and_pseudo_features():
    fetril = method(FeTrIL, 2)
    base = torch.tensor([[1.0, 0.1], [2.0, -0.1], [0.1, 1.0], [-0.1, 2.0]])
    fetril.statistics(Task(0, range(0, 2), 2), batches_of(base, torch.tensor([0, 0, 1, 1])), identity)
    assert fetril.scores(torch.tensor([[3.0, 0.0], [0.0, 3.0]])).argmax(1).tolist() == [0, 1]
    new = torch.tensor([[-1.0, -1.1], [-2.0, -1.9]])
    fetril.statistics(Task(1, range(2, 3), 2), batches_of(new, torch.tensor([2, 2])), identity)
    assert fetril.train_y.tolist() == [2, 2, 0, 0, 1, 1]  # real new, then pseudo old
    assert fetril.weight.shape == (3, 2) and fetril.scores(torch.tensor([[-3.0, -3.0]])).argmax(1).item() == 2


# --------------------------------------------------------------------------- meta device

def test_prototype_statistics_and_scores_are_on_the_device(monkeypatch):
    spec = SPECS["digits"]
    x, y = torch.empty(4, 1, 8, 8, device=META), torch.tensor([0, 1, 0, 1], device=META)
    for name, keys in (("ncm", {}), ("fecam", {}), ("fetril", {"fetril_classifier": "svm"}),
                       ("fetril", {"fetril_classifier": "fc"})):
        model = build_model("resnet8", 1, 8, META)
        model.head.add_task(2)
        m = build_method(resolve({"method": name, "backbone": "resnet8", **keys}), model, spec)
        monkeypatch.setattr("rdfcil.methods.fetril.fit_linear_svm",
                            lambda x, y, n, c, tol: (np.zeros((n, x.shape[1])), np.zeros(n)))
        m.statistics(Task(0, range(0, 2), 2), batches_of(x, y, 2), identity)
        tensors = [v for v in m.state_dict().values() if torch.is_tensor(v) and v.is_floating_point()]
        assert tensors and all(t.device == META for t in tensors), name
        assert m.scores(x).device == META and m.scores(x).shape == (4, 2)
        model.head.add_task(2)
        for phase in m.incremental_phases(Task(1, range(2, 4), 2)):
            assert all(p.device == META for p in phase.parameters)
        for module in m.extra_modules().values():
            assert all(p.device == META for p in module.parameters())
    means = torch.empty(3, 8, device=META), torch.empty(2, 8, device=META)
    assert nearest_new_class(*means).device == META and nearest_new_class(*means, "cosine").device == META


# --------------------------------------------------------------------------- a tiny digits run

TINY = {"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 4, "refinement_epochs": 0,
        "milestones": [3], "batch_size": 32, "train_per_class": 40, "progress": False, "logger": "none",
        "device": TEST_DEVICE, "fetril_fc_epochs": 10}


@pytest.mark.parametrize("name, keys", [("ncm", {}), ("fecam", {}), ("fetril", {}),
                                        ("fetril", {"fetril_classifier": "fc"})])
def test_a_tiny_digits_run_is_above_chance_and_resumes_from_the_state(name, keys):
    torch.manual_seed(0)
    config = resolve({**TINY, "method": name, **keys})
    bench = load_benchmark(config, TEST_DEVICE)
    model = model_for(config, bench.spec, TEST_DEVICE)
    m = build_method(config, model, bench.spec)
    for t in range(2):
        timings, history = run_task(model, m, Task(t, bench.tasks[t], 2), bench, config, None, None)
    confusion = history["confusion"]
    accuracy = np.trace(confusion) / confusion.sum()
    new = np.trace(confusion[5:, 5:]) / confusion[5:].sum()
    assert accuracy > 0.3 and new > 0.2, (accuracy, new)  # 10 classes: chance 0.1
    assert "statistics" in timings and set(timings) <= {"statistics", "head", "eval"}  # nothing else trained
    fresh = build_method(config, model, bench.spec)
    fresh.load_state_dict(m.state_dict(), Task(1, bench.tasks[1], 2))
    x, _ = next(bench.test.batches(range(0, 10), 64))
    with torch.no_grad():
        assert torch.equal(fresh.scores(x), m.scores(x))


def test_the_new_methods_are_registered_with_their_classifier():
    assert {"ncm", "fecam", "fetril"} <= set(METHODS)
    assert METHODS["fecam"].classifier == "FeCAM (Mahalanobis)" and "NCM" in METHODS["ncm"].classifier
    assert build_method(resolve({"method": "fetril"}), build_model("resnet8", 1, 8), SPECS["digits"]).classifier == \
        "LinearSVC (FeTrIL)"


# --------------------------------------------------------------------------- presets and keys

def test_paper_presets_take_the_authors_base_schedules_and_name_the_departures():
    import dataclasses
    from rdfcil.config import Config, preset_values
    fecam, ncm, fetril = (preset_values("paper", "cifar100", m) for m in ("fecam", "ncm", "fetril"))
    assert (fecam["epochs"], fecam["refinement_epochs"], fecam["weight_decay"], fecam["batch_size"]) == (200, 0, 5e-4, 128)
    assert (fetril["epochs"], fetril["milestones"], fetril["weight_decay"], fetril["refinement_epochs"]) == \
        (90, [30, 60], 1e-4, 0)
    assert ncm["epochs"] == 200 and preset_values("paper", "cifar100", "rdfcil")["refinement_epochs"] == 40
    assert "fecam_tukey signed" in fecam["notes"] and "AutoAugment" in fecam["notes"] and "cosine" in fecam["notes"]
    assert "fecam_tukey" not in ncm["notes"] and "Euclidean baseline" in ncm["notes"]
    assert "AugMix" in fetril["notes"] and "LinearSVC" in fetril["notes"] and "fetril_nearest cosine" in fetril["notes"]
    published = {f.name: f.metadata["paper"] for f in dataclasses.fields(Config) if f.metadata}
    new_keys = FeCAM.keys | FeTrIL.keys
    assert new_keys <= set(published)
    for preset in (fecam, fetril):  # every new key at its published value but the Tukey transform
        assert {k for k in new_keys if preset.get(k, published[k]) != published[k]} == \
            ({"fecam_tukey"} if preset is fecam else set())
    assert resolve({"dataset": "cifar100", "method": "fecam", "preset": "paper"}).fecam_tukey == "signed"


@pytest.mark.parametrize("key, value, message", [("fecam_beta", 0, "fecam_beta must be positive"),
                                                 ("fetril_classifier", "knn", "unknown fetril_classifier 'knn'"),
                                                 ("fetril_nearest", "manhattan", "unknown fetril_nearest"),
                                                 ("fetril_svm_c", 0, "fetril_svm_c must be positive")])
def test_bad_values_of_the_new_keys_are_refused_in_one_line(key, value, message):
    with pytest.raises(RdfcilError, match=message):
        resolve({"method": "fetril", key: value})
