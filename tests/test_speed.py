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
    assert stored == pytest.approx(result)
    for key in ("ceiling_s", "lab_epoch_s", "conventional_epoch_s", "rrl_s", "refine_s", "inversion_s",
                "rrl_part_sampling_s", "rrl_part_old_forward_s", "rrl_part_current_fwd_bwd_s",
                "rrl_part_rkd_angles_s", "inversion_part_generator_s", "inversion_part_old_model_s", "eval_s"):
        assert result[key] > 0, key
    assert result["rrl_forward"] == forward and result["batch_size"] == 64  # the digits quick preset
    table = (tmp_path / "speed.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 15 and rows[0].startswith("| measure")  # the header and the 14 measures
    assert f"real + synthetic, {forward} forward" in table and "x sum of parts" in table
    assert table in capsys.readouterr().out


def test_pick_precision_times_every_phase_both_ways_and_prints_the_flag(tmp_path, capsys):
    from rdfcil.config import resolve
    from rdfcil.precision import PHASES, pick_fastest
    result = bench_speed("digits", {"device": TEST_DEVICE}, str(tmp_path), steps=1, workers=0, precision_per_phase=True)
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
