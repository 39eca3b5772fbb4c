"""The speed benchmark runs end to end and writes what it prints (timings are not asserted:
benchmarks are not tests)."""

import json

import pytest

from rdfcil.speed import bench_speed
from conftest import TEST_DEVICE


@pytest.mark.parametrize("forward", ["separate", "joint"])
def test_bench_speed_writes_every_measure(tmp_path, capsys, forward):
    result = bench_speed("digits", {"rrl_forward": forward, "device": TEST_DEVICE}, str(tmp_path), steps=1, workers=0)
    stored = json.loads((tmp_path / "speed.json").read_text())
    assert stored["compile_s"] == result.pop("compile_s") and set(stored.pop("compile_s")) == {
        "base", "rrl", "refine", "train", "inversion"}  # 0 without graphs
    assert stored == pytest.approx(result)
    for key in ("ceiling_s", "lab_epoch_s", "conventional_epoch_s", "rrl_s", "refine_s", "abd_train_s", "inversion_s",
                "rrl_part_sampling_s", "rrl_part_old_forward_s", "rrl_part_current_fwd_bwd_s",
                "rrl_part_rkd_angles_s", "inversion_part_generator_s", "inversion_part_old_model_s", "eval_s"):
        assert result[key] > 0, key
    assert result["rrl_forward"] == forward and result["batch_size"] == 64  # the digits quick preset
    table = (tmp_path / "speed.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 16 and rows[0].startswith("| measure")  # the header and the 15 measures
    assert f"real + synthetic, {forward} forward" in table and "x sum of parts" in table
    assert table in capsys.readouterr().out


def test_pick_precision_times_every_phase_both_ways_and_prints_the_flag(tmp_path, capsys):
    from rdfcil.config import resolve
    from rdfcil.precision import pick_fastest
    from rdfcil.speed import TIMED_PHASES as PHASES
    small = {"backbone": "resnet8", "batch_size": 16, "inversion_batch_size": 16, "z_dim": 32, "generator_width": 16}
    result = bench_speed("digits", {"device": TEST_DEVICE, **small}, str(tmp_path), steps=1, workers=0,
                         precision_per_phase=True)  # bf16 is emulated on a CPU: a small network
    p = result["precision_per_phase"]
    assert sorted(p["seconds"]) == ["bf16", "fp32"]
    for precision, seconds in p["seconds"].items():
        assert list(seconds) == list(PHASES) and all(s > 0 for s in seconds.values()), precision
    assert p["pick"] == pick_fastest(p["seconds"]) and list(p["pick"]) == list(PHASES)
    assert json.loads((tmp_path / "speed.json").read_text())["precision_per_phase"] == p
    table = (tmp_path / "speed.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:] in PHASES]
    assert len(rows) == 5 and all(row.split(" | ")[-1].rstrip(" |") in ("fp32", "bf16") for row in rows)
    flag = table.split("--phase-precision ")[1].split()[0]
    assert resolve({"phase_precision": flag}).phase_precision == p["pick"]  # the printed flag runs as measured
    assert flag in capsys.readouterr().out


def test_each_phase_runs_the_runs_own_steps_on_fresh_batches():
    """What ``check --device cuda`` runs under the sync debug mode: every phase's step, the
    next augmented batch drawn inside it; each step returns its finite terms on the device."""
    import math
    import torch
    from rdfcil.config import resolve
    from rdfcil.data import load_benchmark
    from rdfcil.speed import TIMED_PHASES as PHASES, each_phase
    config = resolve({"dataset": "digits", "preset": "quick", "device": TEST_DEVICE, "batch_size": 32,
                      "inversion_batch_size": 16, "z_dim": 16, "generator_width": 8, "backbone": "resnet8"})
    bench = load_benchmark(config, TEST_DEVICE)
    drawn, batches = [], bench.train.batches

    def counted(*args, **kwargs):
        for batch in batches(*args, **kwargs):
            drawn.append(batch)
            yield batch
    bench.train.batches = counted
    seen = each_phase(config, bench, torch.device(TEST_DEVICE), "fp32", lambda name, step: (step(), step()),
                      fresh_batches=True)
    assert list(seen) == list(PHASES)
    assert len(drawn) == 8  # base, ABD's train, RRL, refinement: 2 steps each, a batch per step
    for name, (first, second) in seen.items():
        assert set(first) == set(second) and len(first) >= 1, name
        for term in first:
            assert first[term].device.type == torch.device(TEST_DEVICE).type and math.isfinite(first[term].item())
    assert set(seen["inversion"][0]) == {"content", "balance", "smoothness", "bn_stats", "total"}
    assert set(seen["rrl"][0]) == {"local_ce", "hkd", "rkd"} and set(seen["refine"][0]) == {"balanced_ce", "hkd"}
    drawn.clear()
    each_phase(config, bench, torch.device(TEST_DEVICE), "fp32", lambda name, step: (step(), step()))
    assert len(drawn) == 2  # one fixed batch for task 0, one for task 1
