"""The first minutes on a GPU as one script (``bash .ci/device-check first``, about 5 minutes on
one GPU): ``python -m rdfcil.devicecheck --device cuda``. It prints, in order, as it goes:

1. versions (Python, torch, CUDA, cuDNN, the GPU);
2. the device selection (the indexed device a run trains on, its TF32 and determinism flags);
3. a 2-task digits R-DFCIL run with ``graphs`` on and off: Dynamo frames, graph breaks,
   recompiles, CUDA-graph recordings, re-recordings, replays and skips
   (:class:`graphs.GraphCounts`), and the final accuracy of each;
4. at the paper's ResNet-32 shape (CIFAR-100 stand-in, paper preset: batch 128), per phase:
   the seconds its step took to compile and its replay milliseconds per step in fp32 and bf16
   under graphs, the eager step with channels-last weights against contiguous ones, and the
   peak memory;
5. a one-line verdict: ``PASS`` or ``FAIL`` with the reasons.

Without a GPU (``--device cpu``) the same code runs on the CPU: Dynamo traces the steps with
its ``eager`` backend (no CUDA graphs: recordings and replays stay 0), the device selection
runs against :mod:`fakecuda` (``cuda`` without index, as a run asks for it), and the shapes are
smaller (the run on ResNet-8; ResNet-32 at batch 8, a small generator, one warm-up and one
timed step: bf16 is emulated there, tens of seconds a step) so that it ends in a few minutes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

# The 2-task run and the shape section's sizes: on a GPU, then on a CPU, then a smoke size.
SIZES = {
    "cuda": {"run": {"epochs": 6, "refinement_epochs": 2, "milestones": [4], "inversion_steps": 200},
             "shape": {}, "standin": (20, 2), "steps": 20},
    "cpu": {"run": {"epochs": 3, "refinement_epochs": 1, "milestones": [2], "inversion_steps": 10,
                    "train_per_class": 40, "backbone": "resnet8"},
            "shape": {"batch_size": 8, "inversion_batch_size": 8, "z_dim": 32, "generator_width": 16},
            "standin": (1, 1), "steps": 1, "warmup": 1},
    "smoke": {"run": {"epochs": 2, "refinement_epochs": 1, "milestones": [], "inversion_steps": 2,
                      "train_per_class": 8, "batch_size": 8, "backbone": "resnet8", "inversion_batch_size": 8,
                      "z_dim": 16, "generator_width": 8},
              "shape": {"backbone": "resnet8", "batch_size": 4, "inversion_batch_size": 4, "z_dim": 16,
                        "generator_width": 8},
              "standin": (1, 1), "steps": 1, "warmup": 1},
}
SHAPE_PHASES = ("base", "rrl", "refine", "inversion")  # R-DFCIL's steps


def say(text: str = "") -> None:
    print(text, flush=True)


def versions() -> dict:
    cuda = torch.cuda.is_available()
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "gpus": torch.cuda.device_count() if cuda else 0}
    say("1. versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return info


def device_selection(device: str) -> torch.device:
    """The device of a run, as ``engine.select_device`` makes it; off CUDA against the fakes."""
    from .config import resolve
    from .distributed import Distributed
    from .engine import select_device
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if torch.device(device).type == "cuda":
        chosen = select_device(resolve({"dataset": "digits", "device": device}), Distributed())
        note = f"current device {torch.cuda.current_device()}"
    else:
        from .fakecuda import fake_cuda
        with fake_cuda(1) as cuda:
            faked = select_device(resolve({"dataset": "digits", "device": "cuda"}), Distributed())
        chosen = select_device(resolve({"dataset": "digits", "device": device}), Distributed())
        note = f"'cuda' against the fakes: {faked}, calls {cuda.calls}"
    say(f"2. device: {chosen} ({note}); TF32 convolutions {torch.backends.cudnn.allow_tf32}, "
        f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn deterministic {torch.backends.cudnn.deterministic}")
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    return chosen


def two_task_runs(device: torch.device, size: dict, work: Path) -> dict:
    """The 2-task digits run with graphs on and off."""
    from . import graphs
    from .config import resolve
    from .engine import run
    from .graphs import GraphCounts
    out = {}
    for on in (True, False):
        config = resolve({"dataset": "digits", "preset": "quick", "method": "rdfcil", "tasks": 2, "seed": 0,
                          "synthetic_pool": 0, "device": str(device), "progress": False, "logger": "none",
                          "graphs": on, "out": str(work / f"digits-graphs-{on}"), **size["run"]})
        started = time.perf_counter()
        with GraphCounts() as counts:
            results = run(config, resume=False, force=True)
        compiled = sum(sum(t.values()) for t in results.data.get("compile_seconds", []))
        out[on] = {"final": results.final_accuracy, "counts": counts, "compile_s": compiled}
        say(f"3. 2-task digits run, graphs {'on ' if on else 'off'}: {counts.text()}; compiled {compiled:.1f} s; "
            f"final {results.final_accuracy:.1f} % (chance 10.0); {time.perf_counter() - started:.1f} s"
            + ("" if device.type == "cuda" or not on else f" (Dynamo backend '{graphs.OFF_CUDA_BACKEND}' off CUDA)"))
    return out


def shape_section(device: torch.device, size: dict, work: Path) -> dict:
    """Per phase at the paper's ResNet-32 shape: compile seconds and replay ms in fp32 and bf16
    under graphs, eager ms with channels-last weights against contiguous, peak memory."""
    from .check import standin_config
    from .data import load_benchmark, write_standin
    from .graphs import compile_seconds
    from .speed import Timer, each_phase, peak_memory_mb
    root = work / "data"
    write_standin("cifar100", root, size["standin"])
    timer, steps = Timer(device), size["steps"]
    table: dict = {}

    def measured(key):
        def measure(name, step):
            if name not in SHAPE_PHASES:
                return None
            compiling = compile_seconds()
            for _ in range(size.get("warmup", 3)):  # compile, CUDA-graph warm-up, recording
                step()
            table.setdefault(name, {})[key + "_compile_s"] = compile_seconds() - compiling
            table[name][key + "_ms"] = 1000 * timer(step, steps, warmup=0)
        return measure
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for graphs_on, precision, channels_last in ((True, "fp32", True), (True, "bf16", True),
                                                (False, "fp32", True), (False, "fp32", False)):
        torch.compiler.reset()
        key = f"{'graphs' if graphs_on else 'eager'}_{precision}_{'cl' if channels_last else 'contiguous'}"
        config = standin_config(str(device), root, size["shape"], graphs_on)
        each_phase(config, load_benchmark(config, device), device, precision, measured(key),
                   channels_last=channels_last)
    say(f"4. {config.backbone} at batch {config.batch_size} (inversion batch {config.inversion_batch_size or config.batch_size}), "
        f"ms per step{'' if device.type == 'cuda' else ' (channels-last is a no-op off CUDA)'}:")
    say("   phase      compile s fp32 / bf16   graphs ms fp32 / bf16   eager fp32 ms channels-last / contiguous")
    for name, m in table.items():
        say(f"   {name:9s}  {m['graphs_fp32_cl_compile_s']:9.1f} / {m['graphs_bf16_cl_compile_s']:<9.1f}"
            f"  {m['graphs_fp32_cl_ms']:9.1f} / {m['graphs_bf16_cl_ms']:<9.1f}"
            f"  {m['eager_fp32_cl_ms']:9.1f} / {m['eager_fp32_contiguous_ms']:.1f}")
    peak = peak_memory_mb(device)
    say(f"   peak memory {peak:,.0f} MB ({'CUDA allocator' if device.type == 'cuda' else 'process RSS'})")
    return {"phases": table, "peak_memory_mb": peak}


def verdict(device: torch.device, runs: dict) -> tuple[bool, str]:
    """PASS when both runs beat chance by far, lie within 10 points of each other, and (on CUDA)
    the graphs run had no graph break, recompile, re-recording or skip and replayed."""
    reasons = []
    on, off = runs[True], runs[False]
    for name, r in (("graphs on", on), ("graphs off", off)):
        if r["final"] < 20.0:
            reasons.append(f"{name} final {r['final']:.1f} % (chance 10)")
    if abs(on["final"] - off["final"]) > 10.0:
        reasons.append(f"graphs on and off {abs(on['final'] - off['final']):.1f} points apart")
    if device.type == "cuda":
        reasons += on["counts"].problems()
        if on["counts"].replays == 0:
            reasons.append("no CUDA graph replayed")
    elif on["counts"].graph_breaks or on["counts"].recompiles:
        reasons += on["counts"].problems()
    return not reasons, "; ".join(reasons)


def main(device: str = "auto", size: str | None = None, out: str | None = None, trace: bool = True) -> int:
    """Every section in order; the exit status 0 on PASS. ``trace=False`` leaves the steps
    eager off CUDA (no Dynamo: seconds instead of a minute of tracing)."""
    from . import graphs
    from .distributed import pick_device
    started = time.perf_counter()
    versions()
    chosen = device_selection(device)
    size = size or ("cuda" if chosen.type == "cuda" else "cpu")
    if chosen.type != "cuda" and trace:
        graphs.OFF_CUDA_BACKEND = graphs.OFF_CUDA_BACKEND or "eager"  # trace the steps off CUDA too
    work = Path(out or tempfile.mkdtemp(prefix="rdfcil-device-check-"))
    runs = two_task_runs(pick_device(str(chosen)), SIZES[size], work)
    shape_section(chosen, SIZES[size], work)
    ok, why = verdict(chosen, runs)
    say(f"5. verdict: {'PASS' if ok else 'FAIL: ' + why} ({time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m rdfcil.devicecheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    parser.add_argument("--size", choices=tuple(SIZES), help="default: cuda on a GPU, cpu elsewhere")
    parser.add_argument("--out", help="keep the runs and stand-in data here (default: a temporary folder)")
    args = parser.parse_args()
    sys.exit(main(args.device, args.size, args.out))
