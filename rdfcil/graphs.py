"""Whole-step graphs (``graphs: true``): each phase's step captured once, replayed by the GPU.

A ResNet-32 step at batch 128 is hundreds of small kernels, each launched by the host. With
``graphs`` the step's loss (the forward of every model the step runs: base, RRL, refinement,
and the inversion's generator and old model with its BatchNorm-statistics hooks; through
AOTAutograd its backward too) is wrapped in ``torch.compile(mode="reduce-overhead")``, which
records CUDA graphs of the static-shape step (training batches have one size: ``drop_last``;
the synthetic batch has a fixed size) and replays them. The optimiser's update is one fused
kernel (SGD and Adam with ``fused=True``, :func:`fused_optimizer`), not part of the graph.
Nothing in a step reads a tensor back to the host: the loss terms are read in blocks
(:class:`steprecord.StepRecord`, ``sync_interval``), class counts are kept by ``index_add_``
on the device, and host-drawn random numbers are copied asynchronously. Drawing the synthetic
batch inside a method's loss (the generator, the old model's labels, or a pick from the pool) is
traced into the same graph: traced on the CPU (2-task digits runs), R-DFCIL's, ABD's and
DeepInversion's steps had no graph break, and ``tests/test_graphs.py`` asserts none for
Finetune and R-DFCIL, with the pool and without. Off CUDA the switch runs eagerly (``OFF_CUDA_BACKEND`` None): CPU inductor compiles for minutes
and CUDA graphs do not exist there. Tests set ``OFF_CUDA_BACKEND = "eager"`` to run the same
Dynamo tracing on the CPU and compare the losses of every phase with the plain path.

A method whose steps are task-invariant (``Method.task_invariant_steps``: R-DFCIL, whose
steps run on the padded head's logits with masks of the old and new classes and its loss
weights as device tensors) compiles each phase's step once for the whole run: the next task's
step finds the graph of the last one. On CUDA the step is compiled with ``fullgraph=True``: a
graph break raises instead of running part of the step eagerly. Any other method's steps have
the task's classes and weights as constants, and torch keeps at most ``recompile_limit`` (8)
versions of one function; so before each of its tasks :func:`new_task` drops the last task's
compiled steps (and their CUDA graphs' memory) with ``torch.compiler.reset()``.

:func:`compile_seconds` is the time torch has spent compiling; the engine records it per
phase (``compile_seconds`` of the run's record, included in the phases' wall seconds).
"""

from __future__ import annotations

import torch

OFF_CUDA_BACKEND: str | None = None


def step_function(loss, device: torch.device, enabled: bool):
    """``loss`` itself, or wrapped for whole-step graphs (see the module docstring)."""
    if not compiling(device, enabled):
        return loss
    if torch.device(device).type == "cuda":
        return torch.compile(loss, mode="reduce-overhead", dynamic=False, fullgraph=True)
    return torch.compile(loss, backend=OFF_CUDA_BACKEND, dynamic=False)


def compile_seconds() -> float:
    """Seconds torch has spent compiling in this process so far: Dynamo's tracing with the
    backend's compile of each forward (``_compile.compile_inner``) and the backward compiled at
    its first call (``backward._backward_impl``), as ``torch._dynamo.utils`` times them."""
    from torch._dynamo.utils import compilation_time_metrics
    return float(sum(sum(compilation_time_metrics.get(key, ())) for key in ("_compile.compile_inner",
                                                                            "backward._backward_impl")))


def compiling(device: torch.device, enabled: bool) -> bool:
    """Whether :func:`step_function` compiles on ``device``."""
    return enabled and (torch.device(device).type == "cuda" or OFF_CUDA_BACKEND is not None)


def new_task(device: torch.device, enabled: bool) -> None:
    """Before a task's steps: drop every compiled step of the last task (``torch.compiler.reset()``,
    see the module docstring); nothing when nothing compiles."""
    if compiling(device, enabled):
        torch.compiler.reset()


def static_address(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, marked as living at one address for the whole run: a tensor a compiled step
    changes in place (the refinement's class counts, ``index_add_``) is then kept by CUDA graphs
    as parameters and buffers are. Any other mutated input makes torch skip CUDA graphs for the
    whole graph (and run it as plain compiled kernels). The mark changes nothing eagerly."""
    torch._dynamo.mark_static_address(tensor)
    return tensor


def fused_optimizer(device: torch.device, enabled: bool) -> dict:
    """``{"fused": True}`` with ``graphs`` on CUDA: SGD's and Adam's update of every parameter in
    one fused kernel instead of a few per tensor; ``{}`` otherwise (the plain optimiser)."""
    return {"fused": True} if enabled and torch.device(device).type == "cuda" else {}


class GraphCounts:
    """What torch did while the ``with`` block ran, counted as torch reports it: frames Dynamo
    compiled (``counters["frames"]``), graph breaks (``counters["graph_break"]``), recompiles (a
    compile whose id ``frame/n`` has ``n > 0``: the same frame compiled again, from
    ``torch._dynamo.callback_handler``), CUDA-graph recordings (cudagraph trees'
    ``record_function``), re-recordings (a function recorded again: a CUDA graph thrown away),
    replays (``torch.cuda.CUDAGraph.replay``) and graphs run without CUDA graphs
    (``counters["inductor"]["cudagraph_skips"]``). Off CUDA the last four stay 0."""

    def __init__(self):
        self.frames = self.graph_breaks = self.recompiles = 0
        self.recordings = self.rerecordings = self.replays = self.skips = 0

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def text(self) -> str:
        return (f"{self.frames} frames, {self.graph_breaks} graph breaks, {self.recompiles} recompiles, "
                f"{self.recordings} CUDA-graph recordings ({self.rerecordings} re-recordings), {self.replays} replays, "
                f"{self.skips} skipped")

    def problems(self) -> list[str]:
        """What makes whole-step graphs fail: graph breaks, recompiles, re-recordings, skips."""
        return [f"{n} {name}" for name, n in (("graph breaks", self.graph_breaks), ("recompiles", self.recompiles),
                                              ("CUDA-graph re-recordings", self.rerecordings),
                                              ("graphs without CUDA graphs", self.skips)) if n]

    def __enter__(self) -> "GraphCounts":
        import re
        from torch._dynamo.utils import counters
        self._counters = counters
        self._start = (counters["frames"]["total"], sum(counters["graph_break"].values()),
                       counters["inductor"]["cudagraph_skips"])
        recorded: set = set()

        def on_start(args) -> None:
            found = re.search(r"(\d+)/(\d+)", str(args.compile_id))
            if "DYNAMO" in str(args.callback_trigger) and found and int(found.group(2)) > 0:
                self.recompiles += 1
        self._callback = torch._dynamo.callback_handler.register_start_callback(on_start)
        self._patched = []
        try:
            from torch._inductor import cudagraph_trees
            manager = cudagraph_trees.CUDAGraphTreeManager
            record = manager.record_function

            def counted_record(tree, new_inputs, function_id):
                self.recordings += 1
                self.rerecordings += function_id in recorded
                recorded.add(function_id)
                return record(tree, new_inputs, function_id)
            self._patched.append((manager, "record_function", record))
            manager.record_function = counted_record
        except ImportError:  # a torch without inductor: nothing records CUDA graphs
            pass
        graph = getattr(torch.cuda, "CUDAGraph", None)
        if graph is not None:
            replay = graph.replay

            def counted_replay(g, *args, **kwargs):
                self.replays += 1
                return replay(g, *args, **kwargs)
            self._patched.append((graph, "replay", replay))
            graph.replay = counted_replay
        return self

    def __exit__(self, *exc) -> bool:
        frames, breaks, skips = self._start
        self.frames = self._counters["frames"]["total"] - frames
        self.graph_breaks = sum(self._counters["graph_break"].values()) - breaks
        self.skips = self._counters["inductor"]["cudagraph_skips"] - skips
        handler = torch._dynamo.callback_handler
        if self._callback in handler.start_callbacks:
            handler.start_callbacks.remove(self._callback)
        for owner, name, original in self._patched:
            setattr(owner, name, original)
        return False
