"""The projected wall time of the paper's protocol is the step counts times the measured costs."""

import pytest

from rdfcil import projection

# one second per training step of any kind, per inversion step and per test image
UNIT = {"batch_size": 128, "lab_epoch_s": 10.0, "epoch_images": 1280, "rrl_s": 1.0, "refine_s": 1.0,
        "inversion_s": 1.0, "inversion_batch": 128, "eval_s": 1.0, "eval_images": 1}


def test_rdfcil_cifar100_five_steps_counts_every_step():
    r = projection.run_seconds(UNIT, "cifar100", "rdfcil", 5)
    base = 160 * (50 * 500 // 128)  # (200 - 40) epochs x 195 steps
    incremental = 5 * 200 * (10 * 500 // 128)  # 5 tasks x (160 RRL + 40 refinement epochs) x 39 steps
    assert r["train_s"] == pytest.approx(base + incremental)
    assert r["inversion_s"] == pytest.approx(5 * 5000)  # after every task but the last
    assert r["eval_s"] == pytest.approx(sum((50 + 10 * t) * 100 for t in range(6)))
    assert r["total_s"] == pytest.approx(r["train_s"] + r["inversion_s"] + r["eval_s"])


def test_abd_uses_its_scripts_schedule():
    r = projection.run_seconds(UNIT, "cifar100", "abd", 25)
    assert r["epochs"] == 250 and r["inversion_steps"] == 10000
    assert r["train_s"] == pytest.approx(250 * 195 + 25 * 250 * (2 * 500 // 128))
    assert r["inversion_s"] == pytest.approx(25 * 10000)


def test_abd_at_its_own_measured_step():
    r = projection.run_seconds({**UNIT, "abd_train_s": 2.0}, "cifar100", "abd", 25)
    assert r["train_s"] == pytest.approx(250 * 195 + 2.0 * 25 * 250 * (2 * 500 // 128))
    assert "costed as" not in projection.text(projection.project({**UNIT, "abd_train_s": 2.0}, "cifar100"), "cpu")


def test_costs_scale_with_the_measured_batch():
    half = {**UNIT, "batch_size": 64, "lab_epoch_s": 5.0, "epoch_images": 640, "rrl_s": 0.5, "refine_s": 0.5,
            "inversion_s": 0.5, "inversion_batch": 64}
    a = projection.run_seconds(UNIT, "cifar100", "rdfcil", 10)
    b = projection.run_seconds(half, "cifar100", "rdfcil", 10)
    assert b["total_s"] == pytest.approx(a["total_s"])


def test_whole_table_and_jobs():
    p = projection.project(UNIT, "tiny-imagenet200", jobs=1)
    assert len(p["runs"]) == 6 and p["table_s"] == pytest.approx(p["table_sequential_s"])
    assert p["table_sequential_s"] == pytest.approx(3 * sum(r["total_s"] for r in p["runs"].values()))
    four = projection.project(UNIT, "tiny-imagenet200", jobs=4)
    assert p["table_sequential_s"] / 4 <= four["table_s"] < p["table_sequential_s"]
    assert projection.makespan([5, 4, 3, 3, 3], 2) == 10  # longest first (the optimum, 9, is not sought)
    assert projection.project(UNIT, "digits") is None
    text = projection.text(four, "cpu")
    assert "rdfcil 25 steps" in text and "at jobs=4" in text and "18 runs" in text


def test_compile_seconds_once_per_run_for_rdfcil_and_per_task_for_abd():
    compiled = {**UNIT, "compile_s": {"base": 10.0, "rrl": 20.0, "refine": 5.0, "train": 30.0, "inversion": 7.0}}
    rdfcil, plain = (projection.run_seconds(m, "cifar100", "rdfcil", 25) for m in (compiled, UNIT))
    assert rdfcil["compile_s"] == 42.0 and plain["compile_s"] == 0.0
    assert rdfcil["total_s"] == pytest.approx(plain["total_s"] + 42.0)
    abd = projection.run_seconds(compiled, "cifar100", "abd", 25)
    assert abd["compile_s"] == 10.0 + 25 * (30.0 + 7.0)
    assert "| compilation |" in projection.text(projection.project(compiled, "cifar100"), "cuda:0")
