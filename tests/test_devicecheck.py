"""``.ci/device-check first`` (``python -m rdfcil.devicecheck``) on the CPU: its sections in
order, the device selection against the CUDA fakes, the verdict's rules."""

import pytest

from rdfcil import devicecheck
from rdfcil.graphs import GraphCounts


def test_first_mode_prints_every_section_in_order_and_passes(tmp_path, capsys):
    # trace=False: Dynamo's tracing of the steps takes a minute here; tests/test_graphs.py traces them
    assert devicecheck.main("cpu", "smoke", str(tmp_path), trace=False) == 0
    lines = capsys.readouterr().out.splitlines()
    numbered = [line.split(".")[0] for line in lines if line[:1].isdigit()]
    assert numbered == ["1", "2", "3", "3", "4", "5"]
    assert "torch" in lines[0] and "cuda:0, calls [('set_device', 0)]" in lines[1]
    runs = [line for line in lines if line.startswith("3.")]
    assert all("frames" in line and "replays" in line and "final" in line for line in runs)
    table = lines[lines.index(next(line for line in lines if line.startswith("4."))) + 2:]
    assert [row.split()[0] for row in table[:4]] == ["base", "rrl", "refine", "inversion"]
    assert all(float(row.split()[i]) > 0 for row in table[:4] for i in (4, 6, 7, 9))  # ms per step
    assert "peak memory" in table[4] and lines[-1].startswith("5. verdict: PASS")


def _runs(on, off, **counts):
    c = GraphCounts()
    vars(c).update(counts)
    return {True: {"final": on, "counts": c}, False: {"final": off, "counts": GraphCounts()}}


@pytest.mark.parametrize("device, runs, fails", [
    ("cuda", _runs(80.0, 78.0, replays=100), ""),
    ("cuda", _runs(80.0, 78.0, replays=100, recompiles=2, rerecordings=1), "2 recompiles; 1 CUDA-graph re-recordings"),
    ("cuda", _runs(80.0, 78.0), "no CUDA graph replayed"),
    ("cpu", _runs(80.0, 60.0), "20.0 points apart"),
    ("cpu", _runs(12.0, 80.0), "graphs on final 12.0 % (chance 10)"),
])
def test_verdict(device, runs, fails):
    import torch
    ok, why = devicecheck.verdict(torch.device(device), runs)
    assert ok == (not fails) and fails in why
