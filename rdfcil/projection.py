"""Projected wall time of the paper's protocol from the per-step costs ``bench-speed`` measured.

For each half-base setting (a base task of half the classes, then 5, 10 or 25 equal steps) and
each method of the paper's table (R-DFCIL, ABD), with the step counts of the ``paper`` preset:

* base task: ``(epochs - refinement_epochs) x floor(n_base / batch)`` training steps at the
  measured Finetune step (``lab_epoch_s`` per ``epoch_images / batch`` steps);
* each incremental task: R-DFCIL ``(epochs - refinement_epochs) x floor(n_new / batch)`` RRL steps
  at ``rrl_s`` and ``refinement_epochs x floor(n_new / batch)`` refinement steps at ``refine_s``;
  ABD ``epochs x floor(n_new / batch)`` steps at ``abd_train_s`` (a measure without it, from
  before ABD's step was timed: at the RRL step, which too runs the real and a synthetic batch
  through the model and the old model);
* after every task but the last: ``inversion_steps`` inversion steps at ``inversion_s`` (the
  R-DFCIL inversion step; ABD's preset runs 10,000 of them);
* after every task: evaluation of the seen classes' test images at the measured rate;
* compilation (``graphs``; ``compile_s`` of the measure, 0 without): R-DFCIL's steps are
  task-invariant and compile once per run (base, RRL, refinement, inversion); ABD's compile
  again in every incremental task (its training and inversion steps).

``n`` are the official dataset sizes (CIFAR-100: 500 training and 100 test images per class,
Tiny-ImageNet: 500 and 50, ImageNet-100: about 1,300 and 50), whatever data the measure ran on
(a stand-in, say). The whole table (3 settings x 2 methods x ``seeds`` seeds) is then placed on
``jobs`` workers, longest run first; that assumes ``jobs`` runs side by side each keep the
measured speed, which holds only while one run leaves the device idle (small models on a GPU),
not on a CPU whose cores the jobs share.
"""

from __future__ import annotations

import heapq

from .config import resolve
from .data import dataset_spec

# test images per class of the official sets (training images: the dataset's ``train_per_class``)
TEST_PER_CLASS = {"cifar100": 100, "tiny-imagenet200": 50, "imagenet100": 50}
STEPS = (5, 10, 25)
METHODS = ("rdfcil", "abd")


def run_seconds(m: dict, dataset: str, method: str, steps: int, overrides: dict | None = None) -> dict:
    """Projected seconds of one paper run (training, inversion, evaluation) from the measure ``m``."""
    classes = {"cifar100": 100, "tiny-imagenet200": 200, "imagenet100": 100}[dataset]
    c = resolve({**(overrides or {}), "dataset": dataset, "method": method, "preset": "paper",
                 "num_tasks": steps + 1, "first_task_classes": classes // 2})
    train_pc, test_pc = dataset_spec(dataset).train_per_class, TEST_PER_CLASS[dataset]
    base = classes // 2
    new = (classes - base) // steps
    b = c.batch_size
    finetune_step = m["lab_epoch_s"] / (m["epoch_images"] / m["batch_size"])
    scale = b / m["batch_size"]  # a measure at another batch: per-step costs scaled by the batch
    per_epoch_base, per_epoch_new = (base * train_pc) // b, (new * train_pc) // b
    train = (c.epochs - c.refinement_epochs) * per_epoch_base * finetune_step * scale
    for _ in range(steps):
        if method == "rdfcil":
            train += (c.epochs - c.refinement_epochs) * per_epoch_new * m["rrl_s"] * scale
            train += c.refinement_epochs * per_epoch_new * m["refine_s"] * scale
        else:
            train += c.epochs * per_epoch_new * m.get("abd_train_s", m["rrl_s"]) * scale
    inversion_scale = (c.inversion_batch_size or b) / m["inversion_batch"]
    inversion = steps * c.inversion_steps * m["inversion_s"] * inversion_scale
    per_test_image = m["eval_s"] / m["eval_images"]
    evaluation = sum((base + t * new) * test_pc for t in range(steps + 1)) * per_test_image
    compiled = m.get("compile_s", {})
    if method == "rdfcil":
        compiling = sum(compiled.get(p, 0.0) for p in ("base", "rrl", "refine", "inversion"))
    else:
        compiling = compiled.get("base", 0.0) + steps * (compiled.get("train", 0.0) + compiled.get("inversion", 0.0))
    return {"train_s": train, "inversion_s": inversion, "eval_s": evaluation, "compile_s": compiling,
            "total_s": train + inversion + evaluation + compiling, "epochs": c.epochs,
            "inversion_steps": c.inversion_steps}


def makespan(durations: list[float], jobs: int) -> float:
    """Wall time of ``durations`` on ``jobs`` workers, longest first to the least loaded."""
    loads = [0.0] * max(1, jobs)
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + d)  # loads is a heap: loads[0] is the least loaded
    return max(loads)


def project(m: dict, dataset: str, jobs: int = 1, seeds: int = 3, overrides: dict | None = None) -> dict | None:
    """Every setting x method and the whole table; None for a dataset without a paper preset."""
    if dataset not in TEST_PER_CLASS:
        return None
    runs = {f"{method} {steps} steps": run_seconds(m, dataset, method, steps, overrides)
            for steps in STEPS for method in METHODS}
    durations = [r["total_s"] for r in runs.values() for _ in range(seeds)]
    return {"dataset": dataset, "jobs": jobs, "seeds": seeds, "runs": runs, "abd_step_measured": "abd_train_s" in m,
            "table_sequential_s": sum(durations), "table_s": makespan(durations, jobs)}


def duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.1f} min"


def text(p: dict | None, device: str) -> str:
    """The projection as a Markdown table, printed under bench-speed's."""
    if p is None:
        return "(no projection: the paper's protocol is defined for cifar100, tiny-imagenet200, imagenet100)\n"
    lines = [f"projected wall time of the paper's half-base protocol on {p['dataset']} (official dataset size, "
             f"paper preset), from the per-step costs above on {device}:", "",
             "| run | epochs | inversion steps | training | inversion | evaluation | compilation | total |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in p["runs"].items():
        lines.append(f"| {name} | {r['epochs']} | {r['inversion_steps']:,} | {duration(r['train_s'])} | "
                     f"{duration(r['inversion_s'])} | {duration(r['eval_s'])} | {duration(r.get('compile_s', 0.0))} | "
                     f"{duration(r['total_s'])} |")
    lines += ["", f"whole table (3 settings x R-DFCIL and ABD x {p['seeds']} seeds = {6 * p['seeds']} runs): "
              f"{duration(p['table_sequential_s'])} one after another, {duration(p['table_s'])} at jobs={p['jobs']} "
              "(if each of the jobs keeps the measured speed"
              + ("" if p.get("abd_step_measured") else "; ABD's step costed as R-DFCIL's RRL step") + ")"]
    return "\n".join(lines) + "\n"
