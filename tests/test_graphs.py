"""``graphs: true`` wraps each phase's step in torch.compile (reduce-overhead on CUDA). On the
CPU the switch is eager; here Dynamo traces the same steps (backend "eager") and the losses must
match the plain path within float tolerance."""

import json

import numpy as np
import pytest
import torch

from rdfcil import graphs, run
from rdfcil.config import resolve

TINY = {"dataset": "digits", "tasks": 2, "backbone": "resnet8", "epochs": 2, "refinement_epochs": 1,
        "milestones": [1], "batch_size": 64, "inversion_steps": 5, "z_dim": 16, "generator_width": 8,
        "synthetic_pool": 0, "progress": False, "device": "cpu", "seed": 0}


def losses(folder):
    history = json.loads((folder / "history.json").read_text())
    phases = [(t, phase, terms) for t, task in enumerate(history["tasks"])
              for phase, terms in {**task["phases"], "inversion": task.get("inversion", {})}.items()]
    return {(t, phase, term): values for t, phase, terms in phases for term, values in terms.items()}


def test_switch_is_eager_off_cuda_and_compiles_on_cuda(monkeypatch):
    def f(x, y):
        return {"ce": x.sum()}
    assert graphs.step_function(f, torch.device("cpu"), True) is f
    assert graphs.step_function(f, torch.device("cuda"), False) is f
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    graphs.step_function(f, torch.device("cuda"), True)
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]


@pytest.mark.parametrize("method", ["finetune", "rdfcil"])
def test_traced_steps_give_the_plain_losses(tmp_path, monkeypatch, method):
    torch.set_num_threads(1)
    plain = run(resolve({**TINY, "method": method, "out": str(tmp_path / "plain")}))
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(graphs, "OFF_CUDA_BACKEND", "eager")
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(kw) or real_compile(fn, **kw))
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    traced = run(resolve({**TINY, "method": method, "graphs": True, "out": str(tmp_path / "traced")}))
    assert compiled and all(kw["backend"] == "eager" for kw in compiled)  # every phase went through Dynamo
    assert not counters["graph_break"]  # each step one graph, the synthetic batch's drawing included
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "traced")
    assert a.keys() == b.keys() and len(a) >= 2
    phases = {phase for _, phase, _ in a}
    assert phases == ({"base", "rrl", "refine", "inversion"} if method == "rdfcil" else {"base", "train"})
    if method == "rdfcil":  # base, rrl, refinement and the inversion's step each went through Dynamo
        assert len(compiled) == 4 and len(a[(0, "inversion", "bn_stats")]) == TINY["inversion_steps"]
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=str(key))
    np.testing.assert_allclose(traced.accuracy_matrix[-1], plain.accuracy_matrix[-1], atol=2.0)


def test_fused_optimiser_only_with_graphs_on_cuda():
    assert graphs.fused_optimizer(torch.device("cuda"), True) == {"fused": True}
    assert graphs.fused_optimizer("cuda:1", True) == {"fused": True}
    assert graphs.fused_optimizer(torch.device("cuda"), False) == {}
    assert graphs.fused_optimizer(torch.device("cpu"), True) == {} == graphs.fused_optimizer("meta", True)


def test_every_task_compiles_its_steps_past_the_recompile_limit(tmp_path, monkeypatch):
    """A task's loss weights and head width are constants of its graphs, so every task compiles
    its steps again; torch keeps 8 versions of a function and runs the ninth eagerly. With
    ``graphs.new_task`` dropping the last task's graphs, all 10 tasks of a run compile every
    step; without it, tasks 9 and 10 ran eagerly (the limit was hit)."""
    from torch._dynamo.utils import counters
    monkeypatch.setattr(graphs, "OFF_CUDA_BACKEND", "eager")
    tiny = {**TINY, "tasks": 10, "epochs": 2, "milestones": [], "batch_size": 16, "inversion_steps": 2,
            "inversion_batch_size": 16, "synthetic_pool": 32, "coverage_samples": 32, "logger": "none"}
    torch._dynamo.reset()
    counters.clear()
    run(resolve({**tiny, "method": "rdfcil", "graphs": True, "out": str(tmp_path / "ten")}))
    frames = dict(counters["frames"])
    assert frames["total"] == frames["ok"] >= 1 + 9 * 3  # base; then RRL, refinement, inversion of every task
    assert not counters["graph_break"]  # pool replay too: one graph per step


def test_class_counts_mutated_in_the_step_are_a_static_address():
    """CUDA graphs skip a whole graph that changes an ordinary input in place; the refinement's
    class counts (``index_add_`` inside the RRL and refinement steps) are marked static, as
    parameters are, and count as before."""
    from rdfcil.methods import ClassCounts
    counts = ClassCounts(4, "cpu")
    assert getattr(counts.counts, "_dynamo_static_input_type", None) in ("guarded", "unguarded")
    counts.add(torch.tensor([0, 2, 2, 3]))
    assert counts.counts.tolist() == [1.0, 0.0, 2.0, 1.0]
