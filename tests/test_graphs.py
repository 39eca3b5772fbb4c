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
    assert calls == [{"mode": "reduce-overhead", "dynamic": False, "fullgraph": True}]


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


def test_a_ten_task_run_compiles_each_phase_once_with_the_plain_losses(tmp_path, monkeypatch):
    """R-DFCIL's steps are task-invariant (padded head, class masks, weights as device tensors):
    over 10 tasks Dynamo compiles the base, RRL, refinement and inversion steps once each (they
    compiled in every task before: 1 + 9 x 3 graphs), with no graph break and no recompile,
    and the losses are the plain path's."""
    from torch._dynamo.utils import counters
    tiny = {**TINY, "tasks": 10, "epochs": 2, "milestones": [], "batch_size": 8, "train_per_class": 8,
            "inversion_steps": 2, "inversion_batch_size": 8, "synthetic_pool": 16, "coverage_samples": 16,
            "logger": "none", "method": "rdfcil"}
    torch.set_num_threads(1)
    run(resolve({**tiny, "out": str(tmp_path / "plain")}))
    compiled, backends = {}, {}

    def counting(name):  # one backend per step function, reused: torch matches a cached graph's backend
        def backend(gm, example_inputs):
            compiled[name] = compiled.get(name, 0) + 1
            return gm.forward
        return backends.setdefault(name, backend)
    real_compile = torch.compile
    monkeypatch.setattr(graphs, "OFF_CUDA_BACKEND", "eager")
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": counting(fn.__qualname__)}))
    torch._dynamo.reset()
    counters.clear()
    run(resolve({**tiny, "graphs": True, "out": str(tmp_path / "traced")}))
    assert compiled == {"Method.base_loss.<locals>.loss": 1, "RDFCIL.rrl_loss.<locals>.loss": 1,
                        "RDFCIL.refine_loss.<locals>.loss": 1, "generator_step.<locals>.step_loss": 1}
    assert dict(counters["frames"]) == {"total": 4, "ok": 4} and not counters["graph_break"]
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "traced")
    assert a.keys() == b.keys() and {t for t, _, _ in a} == set(range(10))
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=str(key))
    record = json.loads((tmp_path / "traced" / "results.json").read_text())
    assert len(record["compile_seconds"]) == 10 and record["compile_seconds"][1]["rrl"] > 0
    assert record["compile_seconds"][2] == {"rrl": 0.0, "refine": 0.0, "inversion": 0.0}  # compiled in task 1


def test_class_counts_mutated_in_the_step_are_a_static_address():
    """CUDA graphs skip a whole graph that changes an ordinary input in place; the refinement's
    class counts (``index_add_`` inside the RRL and refinement steps) are marked static, as
    parameters are, and count as before."""
    from rdfcil.methods import ClassCounts
    counts = ClassCounts(4, "cpu")
    assert getattr(counts.counts, "_dynamo_static_input_type", None) in ("guarded", "unguarded")
    counts.add(torch.tensor([0, 2, 2, 3]))
    assert counts.counts.tolist() == [1.0, 0.0, 2.0, 1.0]


def test_graph_counts_see_breaks_and_recompiles_and_the_check_fails_on_them(monkeypatch, tmp_path):
    from rdfcil import check
    from rdfcil.errors import RdfcilError

    def scaled(x, n):
        return x * n

    def breaking(x):
        x = x + 1
        print(end="")  # a graph break
        return x
    compiled = torch.compile(scaled, backend="eager", dynamic=False)
    with graphs.GraphCounts() as counts:
        compiled(torch.ones(2), 1)
        compiled(torch.ones(2), 1)  # the cached graph
        compiled(torch.ones(2), 2)  # n is a constant of the graph: recompiled
        torch.compile(breaking, backend="eager")(torch.ones(2))
    assert (counts.recompiles, counts.graph_breaks, counts.recordings, counts.replays) == (1, 1, 0, 0)
    assert counts.problems() == ["1 graph breaks", "1 recompiles"]

    constants = iter(range(3, 10))

    def fake_run(overrides, out):  # a run whose step recompiles
        compiled(torch.ones(2), next(constants))
        return "final 50.0 %", {"accuracy_matrix": [[50.0]], "final_accuracy": 50.0}
    monkeypatch.setattr(check, "run_step", fake_run)
    with pytest.raises(RdfcilError, match="graphs: 1 recompiles"):
        check.graphs_step({"device": "cuda:0"}, tmp_path, None)
    info, data = check.graphs_step({"device": "cpu"}, tmp_path, None)  # off CUDA: counted, not failed
    assert data["graphs"]["recompiles"] == 1 and "1 recompiles" in info


def test_pool_lives_in_one_static_set_of_tensors_and_phases_leave_no_gradient():
    """A compiled step reads the synthetic pool where it is (a static address, refilled in place
    each task) and, after a phase, no gradient stays in its memory pool."""
    from rdfcil.data import load_benchmark
    from rdfcil.engine import train_phase
    from rdfcil.inversion import Generator, frozen_copy
    from rdfcil.methods import RDFCIL, Task
    from rdfcil.nets import model_for
    config = resolve({**TINY, "method": "rdfcil", "synthetic_pool": 16, "train_per_class": 8, "batch_size": 8})
    bench = load_benchmark(config, "cpu")
    model = model_for(config, bench.spec, "cpu")
    method = RDFCIL(config, model, bench.spec)
    method.inversion.generator = Generator(8, 1, z_dim=16, width=8).eval()
    pools = []
    model.head.add_task(5)
    for t in (1, 2):
        method.old_model = frozen_copy(model)
        method.begin_task(Task(t, range(0, 5), 3))
        pools.append([x.data_ptr() for x in method.inversion.replay.pool])
        assert all(getattr(x, "_dynamo_static_input_type", None) for x in method.inversion.replay.pool)
    assert pools[0] == pools[1]
    phase = method.phases(Task(0, range(0, 5), 3))[0]
    phase.epochs = 1
    train_phase(model, phase, bench, config, torch.Generator().manual_seed(0), 0, None, None)
    assert all(p.grad is None for p in model.parameters())
