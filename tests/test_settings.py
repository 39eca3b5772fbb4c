"""Degenerate settings refused or named before training; the non-finite loss message; the
checkpoint called intact only once read back."""

from __future__ import annotations

import math

import pytest
import torch

from rdfcil.config import resolve
from rdfcil.data import load_benchmark
from rdfcil.engine import FiniteCheck, check_setting, coverage_warning
from rdfcil.errors import RdfcilError
from rdfcil.io import save_checkpoint


@pytest.fixture(scope="module")
def digits():
    return load_benchmark(resolve({"preset": "quick"}), "cpu")


def setting(digits, world=1, **keys):
    config = resolve({"preset": "quick", **keys})
    bench = digits if "num_tasks" not in keys and "first_task_classes" not in keys else load_benchmark(config, "cpu")
    return check_setting(config, bench, world)


def refusal(call) -> str:
    with pytest.raises(RdfcilError) as err:
        call()
    return str(err.value)


def test_batch_and_shard_checked_against_batchnorm_and_rkd(digits):
    message = refusal(lambda: setting(digits, batch_size=1, rkd="distance"))
    assert "rkd distance" in message and "BatchNorm" in message and "a batch holds 1" in message
    message = refusal(lambda: setting(digits, world=2, batch_size=3))  # shards of 2 and 1
    assert "each of 2 processes gets 1 of a batch of 3" in message and "rkd angle" in message
    assert "batch_size 6 or more" in message
    assert "gets 0 of a batch of 1" in refusal(lambda: setting(digits, world=2, batch_size=1))  # an empty shard
    assert "rkd angle" in refusal(lambda: setting(digits, world=2, batch_size=5))  # 2 per shard: angles need 3
    assert setting(digits, world=2, batch_size=6) == []
    assert setting(digits, world=2, batch_size=5, rkd="distance") == []
    assert setting(digits, world=2, batch_size=4, method="lwf") == []  # BatchNorm alone: 2 per shard
    assert "generator's BatchNorm" in refusal(lambda: setting(digits, batch_size=8, inversion_batch_size=1))


def test_one_class_tasks_name_the_loss_that_vanishes(digits):
    lines = setting(digits, first_task_classes=4, num_tasks=7)
    assert lines == ["rdfcil: tasks 1, 2, 3, 4, 5, 6 hold one class, so its loss term local_ce (the cross-entropy "
                     "over the task's new classes) is identically 0 there"]
    assert setting(digits, first_task_classes=4, num_tasks=7, local_ce=False) == []
    assert setting(digits, first_task_classes=4, num_tasks=7, method="finetune") == []
    assert "local_ce" in setting(digits, first_task_classes=4, num_tasks=7, method="abd")[0]
    assert setting(digits, first_task_classes=1, num_tasks=10, method="lwf") == [
        "lwf: task 0 holds one class, so its loss term ce (the base task's cross-entropy over its one class) is "
        "identically 0 there"]
    # the fact behind it: a cross-entropy over one logit is 0 whatever the logit
    logits = torch.randn(5, 1) * 10
    assert torch.nn.functional.cross_entropy(logits, torch.zeros(5, dtype=torch.long)).item() == 0.0


def test_coverage_line_names_the_missing_classes():
    line = coverage_warning(0, {"class_coverage": [1000, 0, 0, 0, 0, 0, 0, 0]})
    assert line.startswith("the synthetic labels after task 0 cover 1 of 8 seen classes (none of 1000 samples "
                           "is labelled 1, 2, 3, 4, 5, 6, 7)")
    assert coverage_warning(1, {"class_coverage": [3, 1]}) is None and coverage_warning(0, {}) is None


def test_nonfinite_message_blames_the_lr_only_for_a_growing_loss(tmp_path):
    def fail(values):
        check = FiniteCheck(1, "rrl", None)
        for step, total in enumerate(values):
            check(step, {"ce": total, "rkd": 0.0})
        return refusal(lambda: check(len(values), {"ce": 1.0, "rkd": math.nan}))

    steady = fail([2.0, 1.5, 1.2])
    assert "term rkd = nan" in steady and "learning rate is an unlikely cause" in steady
    assert "lower the learning rate" not in steady and "no task had finished" in steady
    assert "grew from 2 to 90" in fail([2.0, 10.0, 90.0]) and "lower the learning rate" in fail([2.0, 10.0, 90.0])
    assert "before any finite step" in fail([])
    check = FiniteCheck(0, "base", None)
    check(0, {"ce": 1.0})
    assert "lower the learning rate" in refusal(lambda: check(1, {"ce": math.inf}))  # an overflow


def test_checkpoint_called_intact_only_once_read_back_finite(tmp_path):
    good, bad = tmp_path / "task_0.pt", tmp_path / "task_1.pt"
    save_checkpoint(good, {"model": {"bn.running_var": torch.ones(3)}, "method": {}})
    save_checkpoint(bad, {"model": {"bn.running_var": torch.tensor([1.0, math.nan])}, "method": {}})
    assert f"({good}) is intact (read back, every tensor finite)" in FiniteCheck(1, "rrl", str(good)).kept()
    kept = FiniteCheck(2, "rrl", str(bad)).kept()
    assert "holds non-finite tensors (model.bn.running_var)" in kept and "is intact" not in kept


def test_nonfinite_model_is_not_saved(tmp_path, digits):
    from rdfcil.methods import build_method
    from rdfcil.nets import model_for
    from rdfcil.runs import save_task
    config = resolve({"preset": "quick", "backbone": "resnet8", "method": "finetune"})
    model = model_for(config, digits.spec, "cpu")
    model.head.add_task(2)
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var[0] = math.inf
    message = refusal(lambda: save_task(tmp_path, 0, model, build_method(config, model, digits.spec), {}, {},
                                        None, {}))
    assert "task 0 ended with non-finite tensors (model.backbone." in message and "running_var" in message
    assert list(tmp_path.iterdir()) == []
