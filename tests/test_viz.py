"""rdfcil.viz (figures and the reproduction table), rdfcil.paper (published numbers, plans) and
the analysis helpers the figures are fed with; all on small made-up data, no training."""

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from rdfcil import analysis, paper, tables, viz
from rdfcil.runs import Results
from rdfcil.errors import RdfcilError
from rdfcil.nets import build_model

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"


def fake_result(method, seed, final, dataset="cifar100", num_tasks=6, first=50, classes=100):
    """A results.json-like record: accuracy falling linearly from 90 to ``final``."""
    sizes = [first] + [(classes - first) // (num_tasks - 1)] * (num_tasks - 1) if first else [classes // num_tasks] * num_tasks
    bounds = np.cumsum([0] + sizes)
    per_task = np.linspace(90.0, final, num_tasks).tolist()
    matrix = [[max(0.0, per_task[i] - 5 * (i - j)) for j in range(i + 1)] for i in range(num_tasks)]
    return Results({"dataset": dataset, "method": method, "seed": seed, "num_tasks": num_tasks,
                    "first_task_classes": first or sizes[0], "tasks": [[int(a), int(b)] for a, b in zip(bounds[:-1], bounds[1:])],
                    "accuracy_per_task": per_task, "accuracy_matrix": matrix, "final_accuracy": per_task[-1],
                    "average_incremental_accuracy": float(np.mean(per_task)), "wall_seconds_total": 10.0 + seed})


RESULTS = [fake_result("abd", 1, 50.0), fake_result("abd", 2, 52.0), fake_result("rdfcil", 1, 55.0),
           fake_result("rdfcil", 2, 54.0), fake_result("rdfcil", 1, 30.0, num_tasks=26)]


def assert_written(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for path, magic in zip(paths, (PNG, PDF)):
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(magic), path


def stem_files(stem):
    return [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]


# --------------------------------------------------------------------------- style and saving

def test_import_has_no_global_side_effects():
    # rcParams.copy(), not dict(rcParams): reading rcParams['backend'] would import pyplot itself
    code = ("import matplotlib, sys, tempfile; before = matplotlib.rcParams.copy(); import rdfcil.viz as v; "
            "fig = v.drift_curves({'a': {'angle': [1, 2]}}, [1, 2]); v.save_figure(fig, tempfile.mkdtemp() + '/f'); "
            "from matplotlib.figure import Figure; "
            "print('matplotlib.pyplot' in sys.modules, matplotlib.rcParams.copy() == before, isinstance(fig, Figure))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_save_figure_writes_png_and_pdf_in_new_folders_deterministically(tmp_path):
    fig = viz.drift_curves({"with RKD": {"angle": [0.3, 0.2], "distance": [0.4, 0.3]}}, [1, 2])
    paths = viz.save_figure(fig, tmp_path / "a" / "b" / "drift")
    assert paths == stem_files(tmp_path / "a" / "b" / "drift")
    assert_written(paths)
    again = viz.save_figure(fig, tmp_path / "again")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert fig._repr_png_().startswith(PNG)  # shows in IPython without %matplotlib inline


# --------------------------------------------------------------------------- every figure

def figure_cases():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 1, 8, 8, generator=g)
    labels = torch.arange(4).repeat(10)
    confusion = np.diag([8, 9, 7, 6]) + 1
    bn_layer = {"name": "stem.1", "kl": 0.5, "mean": torch.randn(4), "var": torch.rand(4) + 0.1,
                "running_mean": torch.randn(4), "running_var": torch.rand(4) + 0.1}
    feats = torch.randn(60, 16, generator=g)
    return {
        "image_grid": lambda save: viz.image_grid({"real": (images, labels), "synthetic": (images[:6], labels[:6])},
                                                  classes=range(4), per_class=3, class_names=list("abcd"), save=save),
        "image_grid_denormalized": lambda save: viz.image_grid({"real": (images, labels)}, per_class=2,
                                                               denormalize=lambda x: x * 0.3 + 0.5, save=save),
        "loss_curves": lambda save: viz.loss_curves({"task 0": {"content": [2.0] * 30, "bn_stats": list(np.linspace(5, 1, 30))},
                                                     "task 1": {"content": [2.3] * 30, "bn_stats": list(np.linspace(4, 1, 30))}},
                                                    save=save),
        "bn_statistics": lambda save: viz.bn_statistics({"real": [bn_layer, {**bn_layer, "kl": 0.1}],
                                                         "synthetic": [{**bn_layer, "kl": 2.0}, bn_layer]}, save=save),
        "pseudo_label_histogram": lambda save: viz.pseudo_label_histogram([[500, 500], [300, 0, 400, 300], None],
                                                                          save=save),
        "per_class_bars": lambda save: viz.per_class_bars({"train": [5, 6, 7, 8], "test": [1, 2, 3, 4]}, "images",
                                                          tasks=[(0, 2), (2, 4)], save=save),
        "weight_norms": lambda save: viz.weight_norms({"before": torch.randn(4, 8), "after": torch.randn(4, 8)},
                                                      new_classes=range(2, 4), tasks=[(0, 2), (2, 4)], save=save),
        "old_new_bars": lambda save: viz.old_new_bars({"before": {"old": 40.0, "new": 90.0, "all": 60.0},
                                                       "after": {"old": 60.0, "new": 70.0, "all": 65.0}}, save=save),
        "old_new_bars_per_task": lambda save: viz.old_new_bars(
            {"before": {"old": [40.0, 30.0], "new": [90.0, 95.0], "all": [60.0, 50.0]},
             "after": {"old": [60.0, 50.0], "new": [70.0, 80.0], "all": [65.0, 60.0]}}, x_labels=["t1", "t2"], save=save),
        "relation_heatmaps": lambda save: viz.relation_heatmaps(
            {"with RKD": {"old": torch.rand(6, 6), "current": torch.rand(6, 6)},
             "without RKD": {"old": torch.rand(6, 6), "current": torch.rand(6, 6)}},
            labels=[0, 0, 0, 1, 1, 1], save=save),
        "drift_curves": lambda save: viz.drift_curves({"with RKD": {"tasks": [1, 2], "angle": [0.2, 0.1]},
                                                       "without RKD": {"tasks": [1, 2], "angle": [0.4, 0.5]}}, save=save),
        "feature_scatter_pca_fallback": lambda save: viz.feature_scatter(
            {"before": {"features": feats[:12], "labels": labels[:12], "kinds": ["real"] * 6 + ["synthetic"] * 6}},
            save=save),
        "confusion_heatmap": lambda save: viz.confusion_heatmap({"before": confusion, "after": confusion.T},
                                                                tasks=[(0, 2), (2, 4)], save=save),
        "accuracy_curves": lambda save: viz.accuracy_curves(RESULTS, published=paper.published, save=save),
        "accuracy_matrices": lambda save: viz.accuracy_matrices(RESULTS, save=save),
        "task_overview": lambda save: viz.task_overview([[100.0], [80.0, 90.0]], images[:8], labels[:8], confusion,
                                                        feats[:15], labels[:15], task=1, tasks=[(0, 2), (2, 4)], save=save),
        "task_overview_without_images": lambda save: viz.task_overview([[100.0]], None, None, confusion[:2, :2],
                                                                       feats[:10], labels[:10] % 2, task=0, save=save),
    }


@pytest.mark.parametrize("name", list(figure_cases()))
def test_each_figure_returns_a_figure_and_writes_png_and_pdf(name, tmp_path):
    stem = tmp_path / "figures" / name
    fig = figure_cases()[name](stem)
    assert isinstance(fig, Figure)
    assert_written(stem_files(stem))
    assert isinstance(figure_cases()[name](None), Figure)  # save=None writes nothing
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [f"{name}.pdf", f"{name}.png"]


def test_feature_scatter_uses_umap_with_enough_points(tmp_path):
    embedding, how = viz.embed_2d(torch.randn(40, 8), seed=0)
    assert how == "UMAP" and embedding.shape == (40, 2) and np.isfinite(embedding).all()
    small, how = viz.embed_2d(torch.randn(5, 8))
    assert how == "PCA" and small.shape == (5, 2)


def test_to_display_denormalizes_or_stretches_each_image():
    x = torch.tensor([[[[-1.0, 1.0]]], [[[2.0, 4.0]]]])
    assert viz.to_display(x).reshape(2, 2).tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert viz.to_display(x, lambda t: (t + 1) / 2).reshape(2, 2).tolist() == [[0.0, 1.0], [1.0, 1.0]]


# --------------------------------------------------------------------------- the reproduction table

def test_reproduction_rows_group_by_split_and_method_with_published_numbers():
    rows = tables.summary_rows(RESULTS, paper.published)
    assert [(r["method"], r["num_tasks"]) for r in rows] == [("abd", 6), ("rdfcil", 6), ("rdfcil", 26)]
    abd, rd6, rd26 = rows
    assert abd["final_mean"] == pytest.approx(51.0) and abd["final_std"] == pytest.approx(np.std([50, 52], ddof=1))
    assert abd["seeds"] == [1, 2] and rd26["seeds"] == [1] and rd26["final_std"] is None
    assert (rd6["paper_last"], rd6["paper_last_std"], rd6["paper_avg"]) == (54.76, 0.76, 64.78)
    assert (rd26["paper_last"], rd26["paper_avg"]) == (30.01, 49.95)
    assert rd6["split"] == "50 + 5 × 10" and rd26["split"] == "50 + 25 × 2"


def test_table_writers_hold_the_rows_and_numbers(tmp_path):
    rows = tables.summary_rows(RESULTS, paper.published)
    paths = tables.write_tables(rows, tmp_path / "tables" / "reproduction")
    assert sorted(paths) == ["csv", "md", "tex"]
    md = paths["md"].read_text()
    lines = md.strip().splitlines()
    assert lines[0].startswith("| method | split | runs | final (ours) | final (published)")
    assert len(lines) == 2 + len(rows)
    assert "| ABD | 50 + 5 × 10 | 2 seeds | 51.00 ± 1.41 | 50.55 ± 1.14 | " in md
    assert "| R-DFCIL | 50 + 5 × 10 | 2 seeds | 54.50 ± 0.71 | 54.76 ± 0.76 | " in md
    assert "| R-DFCIL | 50 + 25 × 2 | 1 | 30.00 | 30.01 ± 0.56 | " in md and "| 49.95 |" in md
    tex = paths["tex"].read_text()
    assert r"\begin{tabular}{llrrrrrl}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"R-DFCIL & 50 + 5 $\times$ 10 & 2 seeds & 54.50 $\pm$ 0.71 & 54.76 $\pm$ 0.76" in tex
    assert tex.count(r"\midrule") == 2  # after the header and between the two splits
    parsed = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["method"] for r in parsed] == ["abd", "rdfcil", "rdfcil"]
    assert float(parsed[1]["final_mean"]) == pytest.approx(54.5) and parsed[2]["final_std"] == ""
    assert parsed[0]["seeds"] == "1 2" and float(parsed[0]["paper_last"]) == 50.55


def test_table_marks_missing_published_numbers():
    rows = tables.summary_rows([fake_result("finetune", 0, 20.0, dataset="digits", num_tasks=5, first=None,
                                              classes=10)], paper.published)
    assert rows[0]["split"] == "5 × 2" and rows[0]["paper_last"] is None
    assert "| Finetune | 5 × 2 | 1 | 20.00 | – |" in tables.markdown_table(rows)
    assert "& -- &" in tables.latex_table(rows)


def test_markdown_rows_renders_any_list_of_dicts():
    assert tables.markdown_rows([{"task": 0, "acc": 12.345}]) == "| task | acc |\n|---|---|\n| 0 | 12.35 |\n"
    assert tables.markdown_rows([]) == ""


# --------------------------------------------------------------------------- rdfcil.paper

def test_published_numbers_of_method_md_section_9():
    assert paper.published("cifar100", "rdfcil", 6, 50) == {"avg": 64.78, "last": 54.76, "last_std": 0.76,
                                                           "source": paper.R_DFCIL}
    assert paper.published("cifar100", "abd", 26, 50)["last"] == 25.27
    assert paper.published("tiny-imagenet200", "rdfcil", 11, 100) == {"avg": 47.60, "last": 38.19, "last_std": None,
                                                                     "source": paper.R_DFCIL}
    assert paper.published("cifar100", "lwf", 10)["last"] == 9.2
    assert paper.published("cifar100", "abd", 5, 20)["last"] == 43.9  # 20 first classes = an equal split
    assert paper.published("cifar100", "joint", 20, None)["last"] == 69.9
    assert paper.published("digits", "rdfcil", 5, None) is None
    assert paper.published("cifar100", "rdfcil", 6, None) is None
    assert len([k for k in paper.PUBLISHED if k[1] is not None]) == 12


def test_plan_defaults_and_validation(tmp_path):
    configs = paper.plan("digits", out_dir=tmp_path)
    assert [c.method for c in configs] == ["finetune", "lwf", "rdfcil", "joint"]
    assert all(c.num_tasks == 5 and c.seed == 0 and c.preset == "quick" for c in configs)
    assert configs[2].inversion_steps == paper.DEFAULTS["digits"]["overrides"]["inversion_steps"]
    assert configs[2].out == str(tmp_path / "digits" / "rdfcil-5tasks-seed0")
    cifar = paper.plan("cifar100", out_dir=tmp_path)
    assert [(c.method, c.num_tasks, c.first_task_classes, c.seed, c.class_order, c.epochs) for c in cifar[:4]] == \
        [("abd", 6, 50, 1, 0, 250), ("abd", 6, 50, 1, 1, 250), ("abd", 6, 50, 1, 2, 250),
         ("rdfcil", 6, 50, 1, 0, 200)]  # ABD: its scripts' 250 epochs; the published repeats: class orders 0-2
    assert len(cifar) == 18 and cifar[-1].out.endswith("cifar100/rdfcil-50+26tasks-seed1-order2")
    equal = paper.plan("cifar100", methods=["lwf"], task_counts=[10], first_task_classes=None, out_dir=tmp_path)
    assert equal[0].first_task_classes is None
    with pytest.raises(RdfcilError, match="^3 tasks do not divide 10 classes"):
        paper.plan("digits", task_counts=[3], out_dir=tmp_path)
    with pytest.raises(RdfcilError, match="^unknown dataset 'mnist'"):
        paper.plan("mnist")
    paper.defaults("digits")["overrides"]["epochs"] = 1  # a copy
    assert paper.DEFAULTS["digits"]["overrides"]["epochs"] != 1


# --------------------------------------------------------------------------- analysis helpers

def test_project_path_and_run_folder(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "rdfcil").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "pyproject.toml").write_text("")
    monkeypatch.chdir(root / "notebooks")
    assert analysis.project_path("runs/x") == root / "runs" / "x"
    assert analysis.project_path(tmp_path / "abs") == tmp_path / "abs"
    config = paper.plan("cifar100", methods=["rdfcil"], task_counts=[11], out_dir="runs")[0]
    assert analysis.run_folder("runs", config, tag="rkd-none") == root / "runs/cifar100/rdfcil-rkd-none-50+11tasks-seed1"


def test_batchnorm_statistics_match_the_inversion_loss_terms():
    torch.manual_seed(0)
    model = build_model("resnet8", 1, 8)
    model.head.add_task(2)
    model.train()
    model(torch.randn(64, 1, 8, 8))  # move the running statistics away from 0 / 1
    x = torch.randn(32, 1, 8, 8)
    stats = analysis.batchnorm_statistics(model, x)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [s["name"] for s in stats] == names
    first = stats[0]
    with torch.no_grad():
        inputs = model.backbone.stem[0](x)
    assert torch.allclose(first["mean"], inputs.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(first["var"], inputs.var(dim=(0, 2, 3), unbiased=False), atol=1e-5)
    from rdfcil.inversion import bn_kl
    assert first["kl"] == pytest.approx(float(bn_kl(first["mean"], first["var"], first["running_mean"],
                                                    first["running_var"])), rel=1e-5)
    assert not any(m._forward_pre_hooks for m in model.modules())  # every hook removed


def test_tables_name_the_classifier_and_mark_numbers_from_another_setting():
    """FeTrIL's two classifiers are two rows, each beside its own published number; a number
    published on another backbone carries a note; every row names its classifier."""
    def with_classifier(result, classifier):
        return Results({**result.data, "classifier": classifier})
    runs = [with_classifier(fake_result("fetril", 1, 50.0), paper.SVM_CLASSIFIER),
            with_classifier(fake_result("fetril", 1, 48.0), paper.FC_CLASSIFIER),
            with_classifier(fake_result("fecam", 1, 60.0), paper.FECAM_CLASSIFIER), fake_result("rdfcil", 1, 55.0)]
    rows = tables.summary_rows(runs, paper.published)
    by = {(r["method"], r["classifier"]): r for r in rows}
    assert by[("rdfcil", "linear head")]["paper_protocol"] is None
    svm, fc = by[("fetril", paper.SVM_CLASSIFIER)], by[("fetril", paper.FC_CLASSIFIER)]
    assert (svm["paper_avg"], svm["paper_protocol"]) == (65.38, None)  # PyCIL's ResNet-32: the lab's setting
    assert (fc["paper_avg"], fc["paper_protocol"]) == (65.78, None)
    fecam = by[("fecam", paper.FECAM_CLASSIFIER)]
    assert (fecam["paper_avg"], fecam["paper_last"], fecam["paper_protocol"]) == (70.9, 62.1, paper.RESNET18)
    md = tables.markdown_table(rows)
    assert md.splitlines()[0].endswith("| classifier |")
    assert "| 62.10 [1] |" in md and "| 70.90 [1] |" in md and f"[1] published in another setting: {paper.RESNET18}" in md
    assert f"| {paper.SVM_CLASSIFIER} |" in md and f"| {paper.FC_CLASSIFIER} |" in md and "| linear head |" in md
    assert "[1] Published in another setting" in tables.latex_table(rows)
    parsed = list(csv.DictReader(io.StringIO(tables.csv_table(rows))))
    assert {r["classifier"] for r in parsed} == {"linear head", paper.SVM_CLASSIFIER, paper.FC_CLASSIFIER,
                                               paper.FECAM_CLASSIFIER}


def test_published_numbers_of_the_frozen_backbone_methods():
    from rdfcil.methods import METHODS
    from rdfcil.config import resolve
    from rdfcil.data import SPECS
    from rdfcil.nets import build_model
    assert paper.published("cifar100", "ncm", 6, 50)["avg"] == 64.8
    assert paper.published("cifar100", "fecam", 11, 50)["protocol"] == paper.RESNET18
    assert paper.published("cifar100", "fetril", 61, 40, classifier=paper.FC_CLASSIFIER)["avg"] == 62.09
    assert paper.published("cifar100", "fetril", 21, 40)["avg"] == 61.5  # only the authors' ResNet-18 number
    assert paper.published("cifar100", "fetril", 21, 40)["protocol"] == paper.FETRIL_RESNET18
    cold = paper.published("cifar100", "fecam", 10, None)
    assert cold["last"] == 37.63 and "cold start" in cold["protocol"]
    assert [r["avg"] for r in paper.published_records("cifar100", "fetril", 6, 50, paper.SVM_CLASSIFIER)] == \
        [65.38, 66.3, 67.6]
    # the records' classifiers are the ones the methods name
    model = build_model("resnet8", 1, 8)
    named = {METHODS["ncm"].classifier, METHODS["fecam"].classifier} | {
        METHODS["fetril"](resolve({"method": "fetril", "fetril_classifier": k}), model, SPECS["digits"]).classifier
        for k in ("svm", "fc")}
    assert {r["classifier"] for r in paper.BEYOND if r["method"] in ("ncm", "fecam", "fetril")} == named
