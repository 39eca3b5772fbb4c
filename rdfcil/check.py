"""``python -m rdfcil check --device cuda``: does the lab work on this device, end to end?

With no data set needed, it writes learnable stand-ins of CIFAR-100 (torchvision's pickles) and
Tiny-ImageNet-200 (its folder layout) to a temporary folder, then on the device: every method
end to end on the paper preset with a short budget, R-DFCIL again with whole-step graphs
(``graphs: true``), a Tiny-ImageNet run (the streaming
pipeline), a run killed with SIGKILL after its first task and resumed, bench-speed in fp32 and
bf16, every phase's step timed both ways under graphs (the faster precision of each, for
``phase_precision``), on CUDA every phase's step under ``torch.cuda.set_sync_debug_mode("error")``
(no host sync inside a step), and the reproduce notebook through papermill (Finetune and
R-DFCIL, one class order). Each step is timed and reported as ``pass`` or its one-line error;
the exit status is 1 if any step failed.

Budgets: ``full`` (the default on CUDA; fits in 10 minutes on one GPU) and ``small`` (the
default elsewhere; a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import RdfcilError

METHOD_ORDER = ("finetune", "joint", "lwf", "deepinversion", "abd", "rdfcil")

# Stand-in images per class (train, test), and the run budget on top of the paper preset.
BUDGETS = {
    "full": {"cifar100": (100, 10), "tiny-imagenet200": (20, 4), "speed_steps": 20, "speed": {},
             "run": {"epochs": 4, "refinement_epochs": 1, "milestones": [2], "inversion_steps": 100,
                     "coverage_samples": 1000}},
    # On a CPU the published generator (z 1000, width 128: ~10 GFLOP a conv at batch 128) alone
    # takes seconds a step, so the small budget also shrinks batches and the generator.
    # bench-speed on a CPU runs ResNet-8 at batch 16: bf16 is emulated there (~10 s a ResNet-32 step).
    "small": {"cifar100": (2, 1), "tiny-imagenet200": (1, 1), "speed_steps": 1,
              "speed": {"backbone": "resnet8", "batch_size": 16, "inversion_batch_size": 16, "z_dim": 32,
                        "generator_width": 16, "num_workers": 0},
              "run": {"epochs": 2, "refinement_epochs": 1, "milestones": [1], "batch_size": 32,
                      "inversion_steps": 2, "inversion_batch_size": 16, "z_dim": 32, "generator_width": 16,
                      "coverage_samples": 64, "num_workers": 0}},
}
SPLIT = {"num_tasks": 3, "first_task_classes": 50}  # 50 + 25 + 25 classes: the half-base shape


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    info: str  # throughputs and numbers on success, the one-line error on failure
    data: dict


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(err, RdfcilError) else f"{type(err).__name__}: {first}"[:300]


def timed(name: str, fn) -> Step:
    """Run ``fn() -> (info, data)``; a raised error becomes a failed step with its one line."""
    started = time.perf_counter()
    try:
        info, data = fn()
        return Step(name, True, time.perf_counter() - started, info, data)
    except Exception as err:  # the check reports every failure and goes on
        return Step(name, False, time.perf_counter() - started, one_line(err), {})


def run_overrides(budget: str, device: str, root: Path, dataset: str, method: str) -> dict:
    return {"dataset": dataset, "preset": "paper", "method": method, "data_root": str(root), "device": device,
            "progress": False, "seed": 0, **SPLIT, **BUDGETS[budget]["run"]}


def run_step(overrides: dict, out: Path):
    from .config import resolve
    from .engine import run
    results = run(resolve({**overrides, "out": str(out)}), resume=False, force=True)
    if not results.finished:
        raise RdfcilError(f"the run in '{out}' did not finish")
    seen = results.tasks[-1][1]
    train = sum(t.get("base", 0) + t.get("train", 0) + t.get("rrl", 0) + t.get("refine", 0)
                for t in results.wall_seconds)
    inversion = sum(t.get("inversion", 0) for t in results.wall_seconds)
    info = (f"final {results.final_accuracy:.1f} % of {seen} classes (chance {100 / seen:.1f}); "
            f"train {train:.1f} s, inversion {inversion:.1f} s")
    return info, {"final_accuracy": results.final_accuracy, "accuracy_matrix": results.accuracy_matrix,
                  "chance": 100 / seen, "train_s": train, "inversion_s": inversion}


def graphs_step(overrides: dict, out: Path, reference: dict | None):
    """The R-DFCIL run again with ``graphs: true``: whole-step graphs on CUDA (compilation
    included in its times), the same code eagerly elsewhere, where the numbers must be the plain
    run's. On CUDA it fails on any graph break, recompile, CUDA-graph re-recording or graph run
    without CUDA graphs, as torch counts them (:class:`graphs.GraphCounts`)."""
    import torch
    from .graphs import GraphCounts
    with GraphCounts() as counts:
        info, data = run_step({**overrides, "graphs": True}, out)
    data["graphs"] = counts.as_dict()
    info += f"; {counts.text()}"
    on_cuda = torch.device(overrides["device"]).type == "cuda"
    if on_cuda and counts.problems():
        raise RdfcilError(f"graphs: {', '.join(counts.problems())} ({counts.text()})")
    if reference is None:
        return info + "; no plain run to compare with", data
    same = data["accuracy_matrix"] == reference["accuracy_matrix"]
    if not on_cuda and not same:
        raise RdfcilError("graphs: true changed the numbers off CUDA, where it runs the plain path "
                          f"(final {data['final_accuracy']:.2f} against {reference['final_accuracy']:.2f} %)")
    close = abs(data["final_accuracy"] - reference["final_accuracy"])
    return (f"{info}; without graphs: train {reference['train_s']:.1f} s, inversion {reference['inversion_s']:.1f} s, "
            f"final {reference['final_accuracy']:.1f} %; same numbers: {'yes' if same else 'no'} "
            f"(final accuracy {close:.1f} points apart; on CUDA graphs draw random numbers in another stream)"), data


def kill_and_resume(overrides: dict, out: Path, reference: dict | None):
    """Start the run in a subprocess, SIGKILL it once task 0's checkpoint exists, resume here."""
    from .config import resolve
    from .engine import run
    from .io import write_yaml
    if out.exists():
        shutil.rmtree(out)
    config_file = out.parent / f"{out.name}.yaml"
    write_yaml(config_file, {**overrides, "out": str(out)})
    child = subprocess.Popen([sys.executable, "-m", "rdfcil", "run", "--config", str(config_file)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (out / "task_0.pt").exists():
        if child.poll() is not None:
            raise RdfcilError(f"the run to be killed exited with status {child.returncode}: "
                              f"{(child.stderr.read() or '').strip()[-200:]}")
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    killed_after = sum(1 for t in range(SPLIT["num_tasks"]) if (out / f"task_{t}.pt").exists())
    if killed_after == SPLIT["num_tasks"]:
        raise RdfcilError("the kill landed after the run had finished; nothing was resumed")
    results = run(resolve({**overrides, "out": str(out)}), resume=True)
    if not results.finished:
        raise RdfcilError("the resumed run did not finish")
    same = reference is not None and results.accuracy_matrix == reference.get("accuracy_matrix")
    info = (f"killed after task {killed_after - 1}, resumed, finished; "
            f"same numbers as the uninterrupted run: {'yes' if same else 'no'}")
    return info, {"killed_after": killed_after, "same_as_uninterrupted": same}


def speed_step(precision: str, device: str, root: Path, out: Path, steps: int, overrides: dict):
    """bench-speed on the CIFAR-100 stand-in (paper preset, with the budget's ``speed`` overrides)."""
    from contextlib import redirect_stdout
    from io import StringIO

    from .speed import bench_speed
    with redirect_stdout(StringIO()):  # the check prints one table of its own
        m = bench_speed("cifar100", {**overrides, "data_root": str(root), "device": device,
                                     "precision": precision, "num_tasks": 10}, str(out), steps, 0)
    b = m["batch_size"]
    info = (f"{m['backbone']}, batch {b}: ceiling {b / m['ceiling_s']:,.0f} img/s; Finetune epoch {m['epoch_images'] / m['lab_epoch_s']:,.0f} "
            f"img/s; RRL {b / m['rrl_s']:,.0f} real img/s; inversion {1 / m['inversion_s']:.1f} steps/s; "
            f"peak {m['peak_memory_mb']:,.0f} MB")
    return info, m


def standin_config(device: str, root: Path, overrides: dict, graphs: bool):
    """R-DFCIL on the CIFAR-100 stand-in, paper preset with the budget's ``speed`` overrides."""
    from .config import resolve
    return resolve({"preset": "paper", **overrides, "dataset": "cifar100", "method": "rdfcil", "data_root": str(root),
                    "device": device, "num_tasks": 10, "graphs": graphs, "progress": False})


def precision_step(device: str, root: Path, steps: int, overrides: dict):
    """Every phase timed in fp32 and bf16 with ``graphs: true`` (``bench-speed --pick-precision``)
    on the CIFAR-100 stand-in: the per-phase ``phase_precision`` for this device."""
    from .speed import pick_precision
    p = pick_precision(standin_config(device, root, overrides, graphs=True), steps)
    s = p["seconds"]
    info = "; ".join(f"{phase} {pick} ({1000 * s['fp32'][phase]:.1f} fp32, {1000 * s['bf16'][phase]:.1f} bf16 ms)"
                     for phase, pick in p["pick"].items())
    return info + "; --phase-precision " + ",".join(f"{k}={v}" for k, v in p["pick"].items()), p


def without_sync(name: str, step) -> str:
    """Three steps of a phase to warm up (compile, CUDA graph warm-up and recording), then two
    more with CUDA's sync debug mode at ``error``: anything in the step that makes the host wait
    for the GPU (a tensor read back, a blocking copy) raises, and the phase is named. The two
    checked steps stay in one epoch of the pipeline (``step.ready(2)``, where the step has it):
    an epoch's start syncs once, between steps, as in a run."""
    import torch
    step(), step(), step()
    getattr(step, "ready", lambda n: None)(2)
    torch.cuda.synchronize()
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(), step()
    except RuntimeError as err:
        raise RdfcilError(f"phase {name} makes the host wait for the GPU inside a step: "
                          f"{str(err).strip().splitlines()[0]}") from None
    finally:
        torch.cuda.set_sync_debug_mode(before)
    torch.cuda.synchronize()
    return "no sync"


def sync_step(device: str, root: Path, overrides: dict):
    """Every phase's step (with the next batch of the run's pipeline drawn inside it) under
    :func:`without_sync`, without and with ``graphs`` (CUDA only)."""
    from .data import load_benchmark
    from .distributed import pick_device
    from .speed import each_phase
    checked = {}
    for graphs in (False, True):
        config = standin_config(device, root, overrides, graphs)
        resolved = pick_device(config.device)
        checked[f"graphs {str(graphs).lower()}"] = each_phase(config, load_benchmark(config, resolved), resolved,
                                                               config.precision, without_sync, fresh_batches=True)
    phases = ", ".join(next(iter(checked.values())))
    return (f"{phases}, graphs off and on: no host sync in 2 steps each "
            "(torch.cuda.set_sync_debug_mode error)"), checked


def notebook_step(device: str, root: Path, work: Path, budget: str):
    import papermill
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "reproduce.ipynb"
    if not notebook.is_file():
        raise RdfcilError(f"'{notebook}' is not here (the check runs the notebook of a source checkout)")
    overrides = {k: v for k, v in BUDGETS[budget]["run"].items()}
    papermill.execute_notebook(
        str(notebook), str(work / "reproduce.ipynb"), kernel_name="python3", progress_bar=False,
        cwd=str(work), parameters={"dataset": "cifar100", "methods": ["finetune", "rdfcil"],
                                   "task_counts": [SPLIT["num_tasks"]], "class_orders": [0],
                                   "first_task_classes": SPLIT["first_task_classes"], "seeds": [0],
                                   "preset": "paper", "overrides": overrides, "data_root": str(root),
                                   "device": device, "out_dir": str(work / "notebook-runs"),
                                   "figures_dir": str(work / "figures")})
    written = sorted(p.name for p in (work / "figures" / "cifar100").iterdir())
    if "reproduction.md" not in written:
        raise RdfcilError("the notebook ran but wrote no reproduction table")
    return f"executed; wrote {len(written)} files (table, curves, matrices)", {"written": written}


def check(device: str = "auto", budget: str | None = None, out: str | None = None,
          report=print) -> list[Step]:
    """Every step of the module docstring on ``device``; ``report`` gets one line per step."""
    from .data import write_standin
    from .distributed import pick_device
    resolved = pick_device(device)
    budget = budget or ("full" if resolved.type == "cuda" else "small")
    if budget not in BUDGETS:
        raise RdfcilError(f"unknown budget '{budget}'; valid: {', '.join(BUDGETS)}")
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="rdfcil-check-"))
    work.mkdir(parents=True, exist_ok=True)
    root, runs = work / "data", work / "runs"
    plan = BUDGETS[budget]
    report(f"rdfcil check on {resolved} ({budget} budget), working in {work}")
    steps: list[Step] = []

    def add(step: Step) -> Step:
        steps.append(step)
        report(f"  {'pass' if step.ok else 'FAIL'}  {step.name:38s} {step.seconds:7.1f} s  {step.info}")
        return step

    add(timed("write stand-ins (CIFAR-100, Tiny-ImageNet)", lambda: (
        f"{', '.join(str(write_standin(d, root, plan[d])) for d in ('cifar100', 'tiny-imagenet200'))}", {})))
    reference = None
    for method in METHOD_ORDER:
        overrides = run_overrides(budget, str(resolved), root, "cifar100", method)
        step = add(timed(f"{method}, cifar100 paper preset", lambda: run_step(overrides, runs / method)))
        if method == "rdfcil" and step.ok:
            reference = step.data
    add(timed("rdfcil, graphs: true", lambda: graphs_step(run_overrides(budget, str(resolved), root, "cifar100", "rdfcil"),
                                                          runs / "rdfcil-graphs", reference)))
    tiny = run_overrides(budget, str(resolved), root, "tiny-imagenet200", "rdfcil")
    add(timed("rdfcil, tiny-imagenet200 paper preset", lambda: run_step(tiny, runs / "tiny-rdfcil")))
    rdfcil = run_overrides(budget, str(resolved), root, "cifar100", "rdfcil")
    add(timed("SIGKILL after task 0, then resume", lambda: kill_and_resume(rdfcil, runs / "resumed", reference)))
    for precision in ("fp32", "bf16"):
        add(timed(f"bench-speed {precision}", lambda: speed_step(precision, str(resolved), root, work / f"speed-{precision}",
                                                                 plan["speed_steps"], plan["speed"])))
    add(timed("precision per phase, graphs: true", lambda: precision_step(str(resolved), root, plan["speed_steps"],
                                                                         plan["speed"])))
    if resolved.type == "cuda":
        add(timed("no host sync inside a step", lambda: sync_step(str(resolved), root, plan["speed"])))
    add(timed("reproduce.ipynb through papermill", lambda: notebook_step(str(resolved), root, work, budget)))
    from .io import write_json
    write_json(work / "check.json", {"device": str(resolved), "budget": budget,
                                     "steps": [asdict(s) for s in steps]})
    if not out:
        shutil.rmtree(work, ignore_errors=True)
    return steps


def table(steps: list[Step]) -> str:
    rows = [f"| {s.name} | {'pass' if s.ok else 'FAIL'} | {s.seconds:.1f} | {s.info} |" for s in steps]
    return "| step | result | wall s | numbers / error |\n|---|---|---|---|\n" + "\n".join(rows)


def command(device: str, budget: str | None, out: str | None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    steps = check(device, budget, out)
    print()
    print(table(steps))
    failed = [s.name for s in steps if not s.ok]
    print(f"\n{len(steps) - len(failed)} of {len(steps)} steps passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
