"""One place per fact: methods and datasets declare themselves, and everything else is derived.

A method that reads a method-specific config key it does not declare would have a finished run
silently reused after that key changed (the run-folder comparison ignores keys a method does not
declare); the recording test below fails instead."""

import dataclasses
import json

import pytest
import torch

import rdfcil
from rdfcil import config as C
from rdfcil import data, paper, tables
from rdfcil.__main__ import parser
from rdfcil.data import DatasetSpec, SPECS, load_benchmark
from rdfcil.engine import run_task
from rdfcil.methods import METHODS, RDFCIL, Task, unused_keys
from rdfcil.nets import model_for
from rdfcil.runs import config_differences, default_out, run_folder, run_name
from conftest import TEST_DEVICE

TINY = {"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 2, "refinement_epochs": 1,
        "milestones": [1], "batch_size": 32, "train_per_class": 40, "inversion_steps": 2, "z_dim": 16,
        "generator_width": 8, "synthetic_pool": 32, "coverage_samples": 16, "analytic_buffer": 64,
        "progress": False, "logger": "none", "device": TEST_DEVICE}


class RecordingConfig:
    """A config that records the name of every attribute read through it."""

    def __init__(self, config):
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._config, name)


def keys_read(cls, config) -> set[str]:
    """Every config key a method of class ``cls`` reads while it learns two tasks (all phases,
    the inversion, the checkpoint's state and its restore)."""
    torch.manual_seed(0)
    recording = RecordingConfig(config)
    bench = load_benchmark(config, TEST_DEVICE)
    model = model_for(config, bench.spec, TEST_DEVICE)
    method = cls(recording, model, bench.spec)
    for t in range(config.num_tasks):
        task = Task(t, bench.tasks[t], config.num_tasks)
        run_task(model, method, task, bench, config, None, None)
    method.load_state_dict(method.state_dict(), Task(0, bench.tasks[0], config.num_tasks))
    return recording.read


def undeclared(cls, config) -> set[str]:
    """Method-specific keys (declared by any registered method) that ``cls`` reads but does not declare."""
    specific = set().union(*(m.keys for m in METHODS.values()))
    return (keys_read(cls, config) & specific) - set(cls.keys)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_declares_the_keys_it_reads(name):
    config = C.resolve({**TINY, "method": name})
    assert undeclared(METHODS[name], config) == set()


def test_a_method_that_forgets_a_key_is_caught():
    class Forgetful(RDFCIL):  # a contributor's copy of R-DFCIL that declares nothing
        name, keys = "forgetful", frozenset()
    missing = undeclared(Forgetful, C.resolve({**TINY, "method": "rdfcil"}))
    assert {"inversion_steps", "lambda_rkd", "refine_lr", "synthetic_pool"} <= missing


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_runs_two_tasks(name, tmp_path):
    results = rdfcil.run({**TINY, "method": name, "out": str(tmp_path / name)})
    assert results.finished and len(results.accuracy_matrix) == 2
    assert 0.0 <= results.final_accuracy <= 100.0 and results.accuracy_per_task[0] > 20.0  # 5 classes: chance 20 %
    inverts = METHODS[name].keys >= {"inversion_steps"}
    assert (results.classes_covered[0] is not None) == inverts
    history = json.loads((tmp_path / name / "history.json").read_text())
    assert ("inversion" in history["tasks"][0]) == inverts


def test_the_lists_of_methods_and_datasets_derive_from_the_registries():
    assert C.method_names() == tuple(METHODS) == ("finetune", "joint", "lwf", "deepinversion", "abd", "rdfcil", "ncm",
                                                  "fecam", "fetril", "acil", "dsal", "efc", "efcpp", "ldc", "adc")
    assert C.dataset_names() == tuple(SPECS)
    bench = parser().parse_args(["bench-accuracy"])
    assert bench.dataset == "digits"
    choices = next(a for a in parser()._subparsers._group_actions[0].choices["bench-accuracy"]._actions
                   if a.dest == "dataset").choices
    assert tuple(choices) == tuple(SPECS)
    assert [tables.method_label(m) for m in sorted(METHODS, key=tables.method_rank)] == \
        ["Finetune", "LwF", "DeepInversion", "ABD", "R-DFCIL", "NCM", "FeTrIL", "FeCAM", "ACIL", "DS-AL",
         "EFC", "EFC++", "LwF + LDC", "LwF + ADC", "Joint"]
    assert C.uses_abd_scripts("abd") and C.uses_abd_scripts("lwf") and not C.uses_abd_scripts("rdfcil")


def test_the_run_folder_comparison_follows_the_declared_keys():
    stored = C.resolve({**TINY, "method": "rdfcil"}).to_dict()
    changed = stored | {"inversion_steps": 5000, "lambda_rkd": 2.0}
    assert config_differences(stored, changed) == ["inversion_steps", "lambda_rkd"]
    lwf = stored | {"method": "lwf"}
    assert config_differences(lwf, lwf | {"inversion_steps": 5000, "lambda_rkd": 2.0}) == []
    assert "inversion_steps" in unused_keys("lwf") and "inversion_steps" not in unused_keys("abd")


def test_one_name_for_a_run_folder(tmp_path):
    c = C.resolve({**TINY, "method": "abd", "first_task_classes": 4, "tasks": 4, "seed": 3})
    assert run_name(c) == "abd-4+4tasks-seed3" and run_name(c, "rkd-none") == "abd-rkd-none-4+4tasks-seed3"
    assert default_out(c) == "runs/digits/abd-4+4tasks-seed3"
    assert run_folder(tmp_path, c) == tmp_path / "digits" / "abd-4+4tasks-seed3"


def test_a_new_dataset_is_one_registry_entry(monkeypatch, tmp_path):
    """A toy dataset registered in ``data.SPECS`` alone: config, CLI list, plan and a run take it."""
    def loader(root, config):
        g = torch.Generator().manual_seed(0)
        labels = torch.arange(4).repeat_interleave(30)
        images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 20, (120, 1, 8, 8), generator=g)).to(torch.uint8)
        return images, labels, images[::3], labels[::3]
    monkeypatch.setitem(SPECS, "toy", DatasetSpec("toy", 8, 1, 4, (0.5,), (0.3,), 0, False, loader,
                                                  default_preset="none"))
    assert "toy" in C.dataset_names()
    plan = paper.plan("toy", methods=["finetune"], task_counts=[2], overrides={"epochs": 10, "refinement_epochs": 0,
                      "milestones": [8], "batch_size": 16, "backbone": "resnet8"}, out_dir=str(tmp_path),
                      progress=False, logger="none", device=TEST_DEVICE)
    results = rdfcil.run(plan[0])
    assert results.finished and results.dataset == "toy" and results.tasks == [[0, 2], [2, 4]]
    assert results.accuracy_per_task[0] > 75.0  # 2 classes told apart by brightness: chance 50 %
    assert data.dataset_spec("toy").default_preset == "none"
    with pytest.raises(rdfcil.RdfcilError, match="unknown dataset 'mnist'; valid datasets: .*toy"):
        data.dataset_spec("mnist")


def test_every_config_value_comes_back_from_its_string():
    """``coerce`` reads each field's type from its hint: the string form of every default
    (as a command line or papermill passes it) gives the default back."""
    defaults = C.Config()
    for f in dataclasses.fields(C.Config):
        value = getattr(defaults, f.name)
        text = ("none" if value is None else json.dumps(value) if isinstance(value, list)
                else str(value).lower() if isinstance(value, bool) else str(value))
        assert C.coerce(f.name, text) == value and type(C.coerce(f.name, text)) is type(value), f.name
    assert C.coerce("first_task_classes", "50") == 50 and C.coerce("lr_incremental", "0.05") == 0.05
    assert C.coerce("head_init_std", "none") is None and C.coerce("rkd", "none") == "none"
    assert C.coerce("class_order", "[1, 0]") == [1, 0] and C.coerce("class_order", "2") == 2
    assert "kd_t2" in C.SWITCHES and "generator_carry" in C.SWITCHES and "epochs" not in C.SWITCHES
    with pytest.raises(rdfcil.RdfcilError, match="inversion_batch_size must be an integer, got 'many'"):
        C.coerce("inversion_batch_size", "many")
