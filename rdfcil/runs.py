"""A run's one home: its folder's name, the folder protocol (compare, resume, reuse), the record
it keeps (``results.json``), its checkpoints, and the reader the notebooks and analysis use.

A run folder holds ``config.yaml`` (the resolved config), ``results.json`` (the record: accuracy
matrix, A_t, old/new accuracy, forgetting, class coverage, wall times, ``finished``),
``history.json`` (per-epoch loss terms of every phase, the inversion's per-step terms) and
``task_<t>.pt`` after each finished task: ``{"task", "model", "method", "record", "confusion",
"snapshots"}``, where ``method`` is the method's own ``state_dict()`` (generator, its optimiser,
projections). A folder is reused when it holds a finished run of the same config, resumed after
its last checkpoint when it holds an unfinished one, and refused when the config differs in a
key that can change the numbers (:func:`config_differences`).
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .config import Config, read_yaml, validate
from .data import Benchmark, load_benchmark
from .distributed import Distributed, pick_device
from .errors import RdfcilError
from .io import load_checkpoint, nonfinite_tensors, read_json, save_checkpoint, write_json, write_yaml
from .methods import Method, Task, build_method, unused_keys
from .metrics import accuracy_on, forgetting, task_row
from .nets import IncrementalNet, model_for
from .version import __version__

# Keys that do not change a run's numbers; every other key must match to resume or reuse a run.
OPERATIONAL_KEYS = {"out", "progress", "device", "num_workers", "eval_batch_size", "notes", "data_root", "logger",
                    "log_interval", "sync_interval"}
# Keys that change only the last digits of CPU results (the order of floating-point sums): a run
# records the value it used (``results.json``: ``threads`` per task) and a resumed or reused run
# is compared with it in one printed line instead of being refused.
NOTED_KEYS = {"threads"}


# --------------------------------------------------------------------------- where a run lives

def run_name(config: Config, tag: str = "") -> str:
    """``<method>[-<tag>]-[<first>+]<T>tasks-seed<k>[-order<i>]``, e.g. ``rdfcil-50+6tasks-seed1``
    or ``rdfcil-50+6tasks-seed1-order2`` (class order 0 is left out of the name; a class order
    given as a list is named by a short hash of it)."""
    split = f"{config.first_task_classes}+" if config.first_task_classes else ""
    order = config.class_order
    if isinstance(order, (list, tuple)):
        import hashlib
        order = hashlib.sha256(",".join(map(str, order)).encode()).hexdigest()[:8]
    suffix = f"-order{order}" if order not in (0, None) else ""
    return f"{config.method}{'-' + tag if tag else ''}-{split}{config.num_tasks}tasks-seed{config.seed}{suffix}"


def default_out(config: Config) -> str:
    """Where a run without ``out`` lives: ``runs/<dataset>/<run_name>``."""
    return f"runs/{config.dataset}/{run_name(config)}"


def is_project_root(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "rdfcil").is_dir()


def package_checkout() -> Path:
    """The folder above the imported ``rdfcil`` package (the clone, for an editable install)."""
    return Path(__file__).resolve().parent.parent


def project_root() -> Path | None:
    """The project root: the nearest folder at or above the working directory holding
    ``pyproject.toml`` and ``rdfcil/``, else the clone the ``rdfcil`` package is imported from
    (an editable install, or a clone on ``PYTHONPATH``); None when neither exists."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if is_project_root(folder):
            return folder
    return package_checkout() if is_project_root(package_checkout()) else None


_FALLBACKS_SAID: set = set()


def project_path(path: str | Path) -> Path:
    """Where the notebooks and plans read and write ``path``: an absolute path as given; a
    relative one from :func:`project_root`, so that a notebook run from ``notebooks/``, from the
    root or from any other folder (papermill in a temporary folder) finds the same runs and
    figures; else (no project root: a package installed from a wheel) from the working
    directory, which a printed line names once."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    root = project_root()
    if root is None:
        here = Path.cwd().resolve()
        if here not in _FALLBACKS_SAID:
            _FALLBACKS_SAID.add(here)
            print(f"note: no project root (a folder with pyproject.toml and rdfcil/) at or above the working "
                  f"directory or the installed package: relative output folders are taken from '{here}'",
                  flush=True)
        return here / path
    return root / path


def run_folder(out_dir: str | Path, config: Config, tag: str = "") -> Path:
    """``<out_dir>/<dataset>/<run_name>``: the layout of :func:`default_out` under another root
    (taken from the project root), so that notebooks share runs."""
    return project_path(out_dir) / config.dataset / run_name(config, tag)


def checkpoint_path(folder: Path, task: int) -> Path:
    return Path(folder) / f"task_{task}.pt"


# --------------------------------------------------------------------------- the folder protocol

@dataclass
class Results:
    """The content of ``results.json`` with attribute access (``r.final_accuracy``)."""
    data: dict

    def __getattr__(self, name):
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def load(cls, folder: str | Path) -> "Results":
        return cls(read_json(Path(folder) / "results.json"))


def config_differences(stored: dict, wanted: dict) -> list[str]:
    """Keys whose values differ and matter: operational keys and keys the run's method never
    reads (e.g. ``refine_lr`` for LwF: a key another registered method declares) cannot change
    its numbers."""
    keys = sorted(set(stored) | set(wanted))
    unused = unused_keys(wanted.get("method", ""))
    return [k for k in keys if k not in OPERATIONAL_KEYS | NOTED_KEYS and k not in unused
            and stored.get(k) != wanted.get(k)]


def threads_note(record: dict, threads: int) -> str | None:
    """One line when ``record``'s tasks were computed at other CPU thread counts than ``threads``."""
    used = sorted(set(record.get("threads") or []))
    if not used or used == [threads]:
        return None
    return (f"the run in '{record.get('config', {}).get('out', '?')}' was computed at {' and '.join(map(str, used))} "
            f"CPU threads and this process uses {threads}: CPU results differ in their last digits with the "
            f"thread count (set threads to compare like with like)")


def damaged_tasks(folder: Path, record: dict) -> dict[int, str]:
    """``{task: what is wrong}`` for the finished tasks of ``record`` whose checkpoint is missing
    or differs in size from the one recorded in ``record["files"]``."""
    sizes = record.get("files") or {}
    damaged = {}
    for t in range(len(record.get("accuracy_per_task") or [])):
        path = checkpoint_path(folder, t)
        recorded = sizes.get(path.name)
        if not path.is_file():
            damaged[t] = f"{path.name} is missing" + (f" (recorded: {recorded} bytes)" if recorded else "")
        elif recorded is not None and path.stat().st_size != recorded:
            damaged[t] = f"{path.name} holds {path.stat().st_size} bytes, not the recorded {recorded}"
    return damaged


@dataclass
class Damaged:
    """A finished run folder whose record names checkpoints that are missing or changed."""
    record: dict
    tasks: dict  # {task: what is wrong}


def finished_tasks(folder: Path, num_tasks: int) -> int:
    """How many consecutive tasks have a checkpoint (task_0.pt, task_1.pt, ...)."""
    done = 0
    while done < num_tasks and checkpoint_path(folder, done).is_file():
        done += 1
    return done


def finished_results(c: Config) -> Results | None:
    """The results of a finished run folder holding this config, else None."""
    folder = Path(c.out)
    try:
        stored = read_json(folder / "results.json")
        same = not config_differences(read_yaml(folder / "config.yaml"), c.to_dict() | {"out": c.out})
    except RdfcilError:
        return None
    return Results(stored) if stored.get("finished") and same and not damaged_tasks(folder, stored) else None


def prepare_folder(c: Config, folder: Path, resume: bool, force: bool, ddp: Distributed):
    """Check an existing run folder against ``c``; return the finished Results to reuse, a
    :class:`Damaged` finished run whose record names missing or changed checkpoints, or the
    number of finished tasks to resume after (the checkpoints before it present, at their
    recorded sizes). Only rank 0 writes."""
    wanted = c.to_dict() | {"out": str(folder)}
    start = 0
    if (folder / "config.yaml").is_file() and not force:
        diff = config_differences(read_yaml(folder / "config.yaml"), wanted)
        if diff:
            raise RdfcilError(f"run folder '{folder}' holds a run with a different config (keys: "
                              f"{', '.join(diff)}); use another --out or --force to overwrite it")
        stored = read_json(folder / "results.json") if (folder / "results.json").is_file() else {}
        damaged = damaged_tasks(folder, stored)
        if stored.get("finished"):
            return Damaged(stored, damaged) if damaged else Results(stored)
        if resume:
            start = min([finished_tasks(folder, c.num_tasks)] + list(damaged))
            if damaged and min(damaged) == start and ddp.is_main:
                print(f"note: {damaged[start]}; resuming at task {start}", file=sys.stderr, flush=True)
    ddp.barrier()  # every process has read the folder before rank 0 changes it
    if ddp.is_main:
        if force and folder.exists():
            for stale in list(folder.glob("task_*.pt")) + [folder / "results.json", folder / "history.json"]:
                stale.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_yaml(folder / "config.yaml", wanted)
    return start


# --------------------------------------------------------------------------- the record

def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def new_record(c: Config, bench: Benchmark) -> dict:
    return {
        "dataset": c.dataset, "method": c.method, "num_tasks": c.num_tasks,
        "first_task_classes": c.first_task_classes or len(bench.tasks[0]), "seed": c.seed,
        "class_order": bench.class_order, "tasks": [[r.start, r.stop] for r in bench.tasks],
        "accuracy_matrix": [], "accuracy_per_task": [], "final_accuracy": None,
        "average_incremental_accuracy": None, "old_accuracy": [], "new_accuracy": [], "forgetting": [],
        "class_coverage": [], "wall_seconds": [], "wall_seconds_total": 0.0, "finished": False, "warnings": [],
        "config": c.to_dict(), "version": __version__, "git_commit": git_commit(),
        "device": str(pick_device(c.device)), "torch": str(torch.__version__),
    }


def add_task_metrics(record: dict, confusion: np.ndarray, bench: Benchmark, t: int, end_info: dict) -> None:
    """Append task ``t``'s row of the accuracy matrix, A_t, old/new accuracy; refresh the summary."""
    tasks = bench.tasks[:t + 1]
    record["accuracy_matrix"].append(task_row(confusion, tasks))
    record["accuracy_per_task"].append(float(100.0 * np.trace(confusion) / confusion.sum()))
    record["old_accuracy"].append(accuracy_on(confusion, range(0, tasks[t].start)) if t else None)
    record["new_accuracy"].append(accuracy_on(confusion, tasks[t]))
    record["final_accuracy"] = record["accuracy_per_task"][-1]
    record["average_incremental_accuracy"] = float(np.mean(record["accuracy_per_task"]))
    record["forgetting"] = forgetting(record["accuracy_matrix"])
    record["class_coverage"].append(end_info.get("class_coverage"))
    record["classes_covered"] = record.get("classes_covered", []) + [end_info.get("classes_covered")]


# --------------------------------------------------------------------------- checkpoints

def save_task(folder: Path, t: int, model, method: Method, record: dict, history: dict, confusion,
              snapshots: dict) -> None:
    """After task ``t``: its checkpoint, then ``history.json`` and ``results.json`` (each atomic).
    A model or method state with a non-finite tensor is refused: nothing is written."""
    bad = nonfinite_tensors({"model": model.state_dict(), "method": method.state_dict()})
    if bad:
        raise RdfcilError(f"task {t} ended with non-finite tensors ({', '.join(bad[:3])}"
                          f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); task_{t}.pt is not written; "
                          f"the run folder keeps the tasks before it")
    save_task_checkpoint(folder, t, model, method, record, confusion, snapshots)
    write_json(folder / "history.json", history)
    record_files(folder, record, t)
    write_json(folder / "results.json", record)


def save_task_checkpoint(folder: Path, t: int, model, method: Method, record: dict, confusion,
                         snapshots: dict) -> None:
    """``task_<t>.pt``: the model, the method's state, the record so far, the confusion matrix
    and the snapshots, written atomically."""
    save_checkpoint(checkpoint_path(folder, t), {
        "task": t, "model": model.state_dict(), "method": method.state_dict(),
        "record": record, "confusion": torch.as_tensor(confusion), "snapshots": snapshots})


def record_files(folder: Path, record: dict, last: int) -> None:
    """``record["files"]``: the size in bytes of ``task_0.pt`` .. ``task_<last>.pt``, checked
    when the run is reused or resumed (:func:`damaged_tasks`)."""
    record["files"] = {checkpoint_path(folder, k).name: checkpoint_path(folder, k).stat().st_size
                       for k in range(last + 1) if checkpoint_path(folder, k).is_file()}


def load_task_state(model: IncrementalNet, method: Method | None, state: dict, bench: Benchmark,
                    num_tasks: int) -> None:
    """Grow ``model``'s head to the checkpoint's task and load the model and the method (the
    method's own ``load_state_dict``: the old model, the generator, its optimiser)."""
    task = state["task"]
    for t in range(task + 1):
        model.head.add_task(len(bench.tasks[t]))
    model.load_state_dict(state["model"])
    if method is not None:
        method.load_state_dict(state["method"], Task(task, bench.tasks[task], num_tasks))


def restore(folder: Path, start: int, model, method: Method, bench: Benchmark, c: Config):
    """Load the checkpoint of task ``start - 1`` into ``model`` and ``method``; returns the
    record and the history up to that task."""
    state = load_checkpoint(checkpoint_path(folder, start - 1), map_location=model.device)
    load_task_state(model, method, state, bench, c.num_tasks)
    history = read_json(folder / "history.json") if (folder / "history.json").is_file() else {"tasks": []}
    history["tasks"] = history["tasks"][:start]
    return state["record"], history


# --------------------------------------------------------------------------- the reader

@dataclass
class RunView:
    """A finished (or partly finished) run folder, read back on ``device``."""
    folder: Path
    device: str = "cpu"
    _checkpoints: dict = field(default_factory=dict, repr=False)

    @cached_property
    def config(self) -> Config:
        values = read_yaml(self.folder / "config.yaml")
        config = Config(**{k: v for k, v in values.items() if k in Config.__dataclass_fields__})
        validate(config)
        return config

    @cached_property
    def results(self) -> Results:
        return Results.load(self.folder)

    @cached_property
    def history(self) -> dict:
        return read_json(self.folder / "history.json")

    @cached_property
    def bench(self) -> Benchmark:
        return load_benchmark(self.config, pick_device(self.device))

    @property
    def num_finished(self) -> int:
        return len(self.results.accuracy_per_task)

    def checkpoint(self, task: int) -> dict:
        if not 0 <= task < self.num_finished:
            raise RdfcilError(f"task {task} has not finished in '{self.folder}' (finished: {self.num_finished})")
        if task not in self._checkpoints:
            self._checkpoints[task] = load_checkpoint(checkpoint_path(self.folder, task), pick_device(self.device))
        return self._checkpoints[task]

    def model(self, task: int) -> IncrementalNet:
        """The model after ``task`` (eval mode)."""
        model = model_for(self.config, self.bench.spec, pick_device(self.device))
        load_task_state(model, None, self.checkpoint(task), self.bench, self.config.num_tasks)
        return model.eval()

    def method(self, task: int) -> Method:
        """The method after ``task``, restored by its own ``load_state_dict`` around the model
        after ``task``: its old model, generator and other modules."""
        model = self.model(task)
        method = build_method(self.config, model, self.bench.spec)
        method.load_state_dict(self.checkpoint(task)["method"], Task(task, self.bench.tasks[task],
                                                                     self.config.num_tasks))
        return method

    def generator(self, task: int):
        """The generator inverted from the model after ``task`` (eval mode; None for methods
        without one)."""
        if "generator" not in self.checkpoint(task)["method"]:
            return None
        return self.method(task).inversion.generator.eval()

    def synthetic(self, task: int, n: int, seed: int = 0):
        """``n`` synthetic images of the generator after ``task`` with the old model's labels."""
        from .inversion import frozen_copy, sample
        generator = self.generator(task)
        if generator is None:
            raise RdfcilError(f"method '{self.config.method}' trains no generator")
        torch.manual_seed(seed)
        images, labels, _ = sample(generator, frozen_copy(self.model(task)), n)
        return images, labels

    def real(self, classes: range, n: int | None = None, split: str = "test"):
        """Real (normalised) images of ``classes`` with remapped labels, the first ``n``."""
        images = self.bench.test if split == "test" else self.bench.train
        xs, ys = zip(*images.batches(classes, 512))
        x, y = torch.cat(xs), torch.cat(ys)
        return (x[:n], y[:n]) if n else (x, y)

    def confusion(self, task: int):
        return self.checkpoint(task)["confusion"].cpu().numpy()


def load_run(folder: str | Path, device: str = "cpu") -> RunView:
    folder = Path(folder)
    if not (folder / "results.json").is_file():
        raise RdfcilError(f"'{folder}' is not a run folder (no results.json); run python -m rdfcil run first")
    return RunView(folder, device)
