"""Presets, YAML, validation, and the package's dependency lists."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from rdfcil import paper
from rdfcil.config import Config, resolve
from rdfcil.errors import RdfcilError

ROOT = Path(__file__).resolve().parents[1]


def test_paper_preset_cifar100_10_tasks_is_method_md_section_7():
    c = resolve({"dataset": "cifar100", "preset": "paper", "tasks": 10})
    assert (c.backbone, c.epochs, c.refinement_epochs, c.milestones) == ("resnet32", 200, 40, [80, 120])
    assert (c.lr, c.lr_decay, c.momentum, c.weight_decay, c.batch_size) == (0.1, 0.1, 0.9, 5e-4, 128)
    assert (c.refine_lr, c.inversion_steps, c.inversion_lr, c.content_temperature) == (0.005, 5000, 1e-3, 1000.0)
    assert (c.alpha_pr, c.alpha_rf, c.alpha_cb, c.z_dim, c.generator_width) == (1e-3, 50.0, 1.0, 1000, 128)
    assert (c.lambda_ce, c.lambda_hkd, c.lambda_rkd) == (0.5, 0.15, 0.5)
    assert (c.synthetic_pool, c.train_per_class, c.lr_incremental, c.inversion_batch_size) == (0, None, None, None)
    assert c.num_tasks == 10 and c.first_task_classes is None and c.notes == ""
    assert c.rrl_forward == "separate"  # two forwards per RRL step, as the published code


def test_paper_preset_tiny_imagenet_and_imagenet100():
    t = resolve({"dataset": "tiny-imagenet200", "preset": "paper", "tasks": 11, "first_task_classes": 100})
    assert (t.weight_decay, t.epochs, t.refinement_epochs, t.inversion_steps) == (2e-4, 200, 40, 5000)
    i = resolve({"dataset": "imagenet100", "preset": "paper", "tasks": 10})
    assert (i.backbone, i.epochs, i.refinement_epochs, i.milestones) == ("resnet18", 120, 30, [30, 60])
    assert (i.batch_size, i.weight_decay, i.inversion_steps) == (64, 1e-4, 10000)


def test_quick_preset_says_how_it_departs_from_the_paper():
    for dataset in ("digits", "fashion-mnist"):
        c = resolve({"dataset": dataset, "preset": "quick"})
        assert c.notes.startswith("quick:") and "pool" in c.notes
        assert c.synthetic_pool > 0
        assert c.rrl_forward == "joint" and "rrl_forward joint" in c.notes


def test_digits_quick_preset_runs_the_paper_schedule_and_the_demo_a_lighter_one():
    c = resolve({"dataset": "digits", "preset": "quick"})
    assert (c.epochs, c.refinement_epochs, c.milestones, c.lr, c.lr_incremental) == (200, 40, [80, 120], 0.1, None)
    assert "lr 0.1 on every task" in c.notes
    demo = resolve({**paper.defaults("digits")["overrides"], "dataset": "digits", "preset": "quick"})
    assert (demo.epochs, demo.refinement_epochs, demo.milestones, demo.lr_incremental) == (30, 8, [15], 0.05)
    f = resolve({"dataset": "fashion-mnist", "preset": "quick"})
    assert (f.epochs, f.lr_incremental) == (10, 0.05) and "incremental lr 0.05" in f.notes


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dataset": "digits", "epochs": 7, "refinement_epochs": 2, "method": "lwf"}))
    from rdfcil.config import resolve as r
    c = r({"epochs": "9"}, path)
    assert (c.dataset, c.method, c.epochs) == ("digits", "lwf", 9)


@pytest.mark.parametrize("overrides, fragment", [
    ({"dataset": "mnist"}, "valid datasets: digits"),
    ({"method": "icarl"}, "valid methods: finetune"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"batch_size": -4}, "batch_size must be a positive integer"),
    ({"lr": -0.1}, "lr must be positive"),
    ({"wieght_decay": 0.1}, "did you mean 'weight_decay'"),
    ({"epoch": 3}, "did you mean 'epochs'"),
    ({"dataset": "digits", "preset": "paper"}, "preset 'paper' exists for"),
    ({"rrl_forward": "both"}, "valid: separate, joint"),
])
def test_bad_values_give_one_line(overrides, fragment):
    with pytest.raises(RdfcilError) as err:
        resolve(overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_pyproject_and_environment_list_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=\[ ]", d)[0] for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    names = {re.split(r"[<>=]", d)[0] for d in env if isinstance(d, str)} - {"python", "pip"}
    conda_to_pip = {"pytorch": "torch"}
    assert {conda_to_pip.get(n, n) for n in names} == set(deps)
    assert {"torch", "torchvision", "numpy", "scikit-learn", "matplotlib", "seaborn", "umap-learn",
            "ipywidgets", "jupyterlab", "papermill", "tqdm", "pyyaml", "pandas", "tensorboard", "pytest",
            "nbval"} == set(deps)


def test_config_round_trips_through_a_dict():
    c = Config(epochs=3)
    assert Config(**c.to_dict()) == c
