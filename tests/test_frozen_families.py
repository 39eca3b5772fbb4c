"""What notebook 06 computes and draws from frozen features: the class statistics in a 2-D PCA,
NCM's and FeCAM's predictions and where they disagree, ACIL's head over several splits of the
same classes, and the three figures; on small made-up features, no training."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from rdfcil import analysis, viz
from rdfcil.errors import RdfcilError

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"


def test_pca_class_statistics_project_means_and_covariances_consistently():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    feats = torch.randn(120, 5, generator=generator) * torch.tensor([3.0, 1.5, 0.2, 0.1, 0.1])
    feats = feats + torch.tensor([[4.0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0], [-4.0, 0, 0, 0, 0]])[labels]
    others = feats[:7] + 1.0
    s = analysis.pca_class_statistics(feats, labels, 3, others=others)
    assert s["points"].shape == (120, 2) and s["means"].shape == (3, 2) and s["covs"].shape == (3, 2, 2)
    for c in range(3):  # the mean and covariance of each class's projected points
        rows = s["points"][labels.numpy() == c]
        np.testing.assert_allclose(s["means"][c], rows.mean(axis=0), atol=1e-10)
        np.testing.assert_allclose(s["covs"][c], np.cov(rows, rowvar=False), atol=1e-10)
    f = feats.double().numpy()
    total = ((f - f.mean(0)) ** 2).sum()
    np.testing.assert_allclose(s["explained"], (s["points"] ** 2).sum(0) / total, rtol=1e-10)
    assert s["explained"][0] > s["explained"][1] > 0.05 and s["explained"].sum() > 0.95  # two dominant axes
    axis = np.linalg.lstsq(s["points"], f - f.mean(0), rcond=None)[0]  # the same axes for the other rows
    np.testing.assert_allclose(s["others"], (others.double().numpy() - f.mean(0)) @ np.linalg.pinv(axis), atol=1e-8)
    with pytest.raises(RdfcilError, match="class 3 has 0 feature rows"):
        analysis.pca_class_statistics(feats, labels, 4)


def test_disagreements_by_hand():
    labels = torch.tensor([0, 1, 2, 2, 1])
    out = analysis.disagreements(labels, {"NCM": torch.tensor([0, 1, 1, 2, 0]), "FeCAM": torch.tensor([0, 2, 2, 2, 0])})
    assert out["index"].tolist() == [1, 2]
    assert out["accuracy"] == pytest.approx({"NCM": 60.0, "FeCAM": 60.0})
    assert out["right_when_disagree"] == pytest.approx({"NCM": 50.0, "FeCAM": 50.0})
    same = analysis.disagreements(labels, {"a": labels, "b": labels})
    assert len(same["index"]) == 0 and np.isnan(same["right_when_disagree"]["a"]) and same["accuracy"]["b"] == 100.0


class Flat(nn.Module):
    """A stand-in backbone: the flattened image is the feature."""

    def features(self, x):
        return x.flatten(1)


class FakeFeCAM:
    """A FeCAM-shaped object (model, means, scores) whose scores prefer the smallest x-coordinate gap."""

    def __init__(self):
        self.model = Flat()
        self.means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    def scores(self, x):
        f = self.model.features(x)
        return -(f[:, :1] - self.means[:, 0][None]).abs()


def test_prototype_predictions_take_ncm_from_the_means_and_fecam_from_its_scores():
    images = torch.tensor([[3.0, 1.0], [1.0, 3.0], [0.2, 5.0]]).reshape(3, 1, 1, 2)
    # NCM: cosine to (1, 0) or (0, 1): the larger coordinate wins; the fake FeCAM: x nearest to 1 or 0
    predicted = analysis.prototype_predictions(FakeFeCAM(), images, batch_size=2)
    assert predicted["NCM"].tolist() == [0, 1, 1]
    assert predicted["FeCAM"].tolist() == [0, 0, 1]


def test_analytic_head_is_the_same_for_every_split_and_is_the_ridge_solution():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 6, generator=generator) * 3
    train_y, test_y = torch.arange(10).repeat_interleave(20), torch.arange(10).repeat_interleave(10)
    train_f = centres[train_y] + torch.randn(200, 6, generator=generator)
    test_f = centres[test_y] + torch.randn(100, 6, generator=generator)
    out = analysis.analytic_over_splits((train_f, train_y), (test_f, test_y), 4, [1, 3, 6], 64, 0.1, seed=0)
    assert [out[T]["seen"] for T in (1, 3, 6)] == [[4, 10], [4, 6, 8, 10], [4, 5, 6, 7, 8, 9, 10]]
    assert [len(out[T]["accuracy"]) for T in (1, 3, 6)] == [2, 4, 7]
    from rdfcil.analytic import RandomExpansion
    x = torch.relu(RandomExpansion(6, 64, 0).forward(train_f))  # the closed form on every row
    y = torch.nn.functional.one_hot(train_y, 10).double()
    ridge = torch.linalg.solve(0.1 * torch.eye(64, dtype=torch.float64) + x.T @ x, x.T @ y)
    for T in (1, 3, 6):
        torch.testing.assert_close(out[T]["weight"], ridge, atol=1e-9, rtol=0)
        assert out[T]["final"] == out[1]["final"]
    predicted = (torch.relu(RandomExpansion(6, 64, 0).forward(test_f)) @ ridge).argmax(1)
    assert out[1]["final"] == pytest.approx(100.0 * (predicted == test_y).double().mean().item())
    assert out[1]["final"] > 50.0  # ten separated classes: far above chance
    with pytest.raises(RdfcilError, match="4 incremental tasks do not divide the 6 classes"):
        analysis.analytic_over_splits((train_f, train_y), (test_f, test_y), 4, [4], 64, 0.1)


def test_the_three_figures_are_written(tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(10)
    s = analysis.pca_class_statistics(torch.randn(30, 4, generator=generator) + labels[:, None], labels, 3,
                                      others=torch.randn(5, 4, generator=generator))
    images = torch.rand(5, 1, 8, 8, generator=generator)
    cases = {
        "ellipses": lambda save: viz.class_ellipses(s, class_names=["a", "b", "c"], marked=s["others"][:3], save=save),
        "grid": lambda save: viz.prediction_grid(images, torch.tensor([0, 1, 2, 0, 1]),
                                                 {"NCM": torch.tensor([0, 2, 2, 1, 1]), "FeCAM": torch.tensor([1, 1, 0, 0, 2])},
                                                 columns=3, save=save),
        "splits": lambda save: viz.split_accuracy({1: {"seen": [4, 10], "accuracy": [99.0, 90.0]},
                                                   3: {"seen": [4, 6, 8, 10], "accuracy": [99.0, 97.0, 94.0, 90.0]}},
                                                  num_classes=10, save=save),
    }
    for name, draw in cases.items():
        assert isinstance(draw(tmp_path / name), Figure)
        for suffix, magic in ((".png", PNG), (".pdf", PDF)):
            data = (tmp_path / (name + suffix)).read_bytes()
            assert len(data) > 1000 and data.startswith(magic), name
    empty = viz.prediction_grid(images[:0], torch.tensor([]), {"NCM": torch.tensor([])})
    assert [t.get_text() for t in empty.axes[0].texts] == ["no disagreement"]
