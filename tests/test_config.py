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


PUBLISHED = dict(resnet_variant="published", head_init_std=0.001, refine_counts="task", kd_t2=False,
                 deepinversion_replay="published", abd_mu=0.1, abd_ce_weighting=True, generator_carry=True,
                 joint_from_scratch=True)


@pytest.mark.parametrize("dataset", ["cifar100", "tiny-imagenet200", "imagenet100"])
@pytest.mark.parametrize("method", ["finetune", "joint", "lwf", "deepinversion", "abd", "rdfcil"])
def test_paper_preset_has_no_departure(dataset, method):
    c = resolve({"dataset": dataset, "preset": "paper", "method": method})
    assert all(getattr(c, k) == v for k, v in PUBLISHED.items())
    assert all(getattr(c, k) == getattr(Config(), k) for k in PUBLISHED)  # the dataclass defaults are published
    assert paper.departures(c) == {}
    if method == "rdfcil":
        assert (c.crop_fill, c.color_jitter) == ("mean", False)


def test_paper_preset_of_the_baselines_is_the_abd_scripts():
    for dataset in ("cifar100", "tiny-imagenet200"):
        for method in ("finetune", "joint", "lwf", "deepinversion", "abd"):
            c = resolve({"dataset": dataset, "preset": "paper", "method": method})
            assert (c.epochs, c.refinement_epochs, c.milestones, c.weight_decay) == (250, 0, [100, 150, 200], 2e-4)
            assert (c.inversion_steps, c.batch_size, c.color_jitter, c.crop_fill) == (10000, 128, True, "zero")
            assert "not public" in c.notes and "ABD repository" in c.notes
    i = resolve({"dataset": "imagenet100", "preset": "paper", "method": "abd"})
    assert (i.epochs, i.milestones, i.batch_size, i.inversion_steps) == (100, [30, 60, 80, 90], 256, 50000)
    assert "RandomResizedCrop" in i.notes and i.imagenet_crop == "random_resized"
    assert resolve({"dataset": "imagenet100", "preset": "paper", "method": "rdfcil"}).imagenet_crop == "center_pad"


def test_quick_presets_follow_the_published_variants_and_list_their_departures():
    for dataset in ("digits", "fashion-mnist"):
        for method in ("finetune", "joint", "lwf", "deepinversion", "abd", "rdfcil"):
            c = resolve({"dataset": dataset, "preset": "quick", "method": method})
            assert all(getattr(c, k) == v for k, v in PUBLISHED.items())
            assert "published variants" in c.notes
            if method != "rdfcil":
                assert "ABD repository's baselines" in c.notes and "250 epochs" in c.notes


def test_departures_name_every_differing_key_the_method_reads():
    c = resolve({"dataset": "cifar100", "preset": "paper", "method": "abd", "abd_mu": 1.0, "refine_lr": 0.2,
                 "resnet_variant": "standard", "seed": 3})
    assert paper.departures(c) == {"abd_mu": (1.0, 0.1), "resnet_variant": ("standard", "published")}
    quick = resolve({"dataset": "digits", "preset": "quick", "method": "rdfcil"})
    found = paper.departures(quick)
    assert {"backbone", "synthetic_pool", "rrl_forward", "refine_lr", "inversion_steps"} <= set(found)
    assert found["backbone"] == ("resnet20", "resnet32")
    lines = paper.departure_lines([quick, resolve({"dataset": "digits", "preset": "quick", "method": "lwf"})])
    assert any(line.startswith("backbone: runs 'resnet20' (lwf, rdfcil)") for line in lines)


def test_method_keys_declare_the_new_switches():
    from rdfcil.methods import method_keys, unused_keys
    assert {"refine_counts"} <= method_keys("rdfcil")
    assert {"abd_mu", "abd_ce_weighting", "generator_carry"} <= method_keys("abd")
    assert {"kd_t2", "deepinversion_replay", "generator_carry"} <= method_keys("deepinversion")
    assert {"kd_t2"} <= method_keys("lwf") and method_keys("joint") == {"joint_from_scratch"}
    assert "joint_from_scratch" in unused_keys("rdfcil") and "refine_counts" in unused_keys("abd")


def test_new_switches_from_strings():
    c = resolve({"head_init_std": "none", "kd_t2": "true", "abd_ce_weighting": "false", "abd_mu": "1",
                 "crop_fill": "zero", "refine_counts": "refinement", "joint_from_scratch": "0"})
    assert (c.head_init_std, c.kd_t2, c.abd_ce_weighting, c.abd_mu) == (None, True, False, 1.0)
    assert (c.crop_fill, c.refine_counts, c.joint_from_scratch) == ("zero", "refinement", False)
    assert resolve({"head_init_std": "0.01"}).head_init_std == 0.01
    for key in ("resnet_variant", "crop_fill", "imagenet_crop", "refine_counts", "deepinversion_replay"):
        with pytest.raises(RdfcilError, match=key):
            resolve({key: "bogus"})


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
            "ipywidgets", "jupyterlab", "papermill", "tqdm", "pyyaml", "pandas", "tensorboard", "filelock",
            "pytest", "nbval", "submitit"} == set(deps)


def test_config_round_trips_through_a_dict():
    c = Config(epochs=3)
    assert Config(**c.to_dict()) == c


def test_cuda_numerics_keys_and_compile_with_graphs_refused():
    import pytest
    from rdfcil.config import resolve
    from rdfcil.errors import RdfcilError
    c = resolve({"dataset": "digits"})
    assert (c.tf32, c.deterministic) == ("convolutions", False)  # PyTorch's defaults, the published code's
    with pytest.raises(RdfcilError, match="unknown tf32 'some'"):
        resolve({"dataset": "digits", "tf32": "some"})
    with pytest.raises(RdfcilError, match="set one of them"):
        resolve({"dataset": "digits", "compile": True, "graphs": True})
