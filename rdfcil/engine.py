"""``run(config) -> Results``: the one task-by-task loop shared by every method.

For each task: grow the head, set the task's seed, let the method build its phases, train each
phase (SGD, step lr schedule), let the method end the task (freeze, invert), evaluate on the
test images of every seen class, and write the checkpoint and ``results.json`` atomically.
Each stage is seeded from ``(seed, task, stage)``, so a run resumed after its last finished task
gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .config import Config, resolve
from .data import Benchmark, load_benchmark
from .distributed import Distributed, pick_device
from .errors import RdfcilError
from .graphs import compile_seconds, fused_optimizer, new_task, step_function
from .lock import folder_lock, rank_zero
from .methods import METHODS, Method, Phase, Task, build_method
from .metrics import confusion_matrix
from .nets import model_for
from .precision import autocast_for, memory_format_for, precision_of, set_cuda_numerics
from .progress import RunProgress
from .steprecord import StepRecord
from .io import write_json
from .runs import (Damaged, Results, add_task_metrics, checkpoint_path, default_out, new_record, prepare_folder,
                   record_files, restore, save_task, save_task_checkpoint, threads_note)
from .tblog import NullLogger, every, make_logger, synthetic_grid

def stage_seed(seed: int, task: int, stage: int) -> int:
    """A distinct seed per (run seed, task, stage): stage 0 training, 1 inversion, 2 the inversion's
    logged grid, 3 the statistics pass's augmentation."""
    return (seed * 1_000_003 + task * 101 + stage) % (2 ** 63)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- progress

def make_progress(enabled: bool):
    """One bar for the whole run, reset for each phase (:class:`progress.RunProgress`), or None."""
    return RunProgress() if enabled else None


class FiniteCheck:
    """Raise a one-line error naming task, phase, step and loss term on a NaN or inf loss.

    The message blames the learning rate only when the loss was growing before it failed (its
    last finite total above ``GROWTH`` times its first) or a term overflowed to infinity; it calls
    the last checkpoint intact only once its tensors have been read back and found finite."""

    GROWTH = 4.0

    def __init__(self, task: int, phase: str, last_checkpoint: str | None):
        self.task, self.phase, self.last = task, phase, last_checkpoint
        self.first: float | None = None
        self.latest: tuple[int, float] | None = None

    def __call__(self, step: int, terms: dict[str, float]) -> None:
        """``terms``: the step's loss terms as floats (read back by a :class:`StepRecord`)."""
        total = float(sum(terms.values()) if "total" not in terms else terms["total"])
        if math.isfinite(total):
            self.first = total if self.first is None else self.first
            self.latest = (step, total)
            return
        bad = [name for name, value in terms.items() if name != "total" and not math.isfinite(float(value))]
        overflow = any(math.isinf(float(terms[name])) for name in bad)
        raise RdfcilError(f"non-finite loss in task {self.task}, phase '{self.phase}', step {step}: "
                          f"term {', '.join(bad) or 'total'} = {total}; {self.kept()}; {self.cause(overflow)}")

    def cause(self, overflow: bool) -> str:
        if self.latest is None:
            return ("it failed before any finite step of this phase, so not through its learning rate: look at "
                    "the inputs, the batch size and the settings of that loss term")
        step, latest = self.latest
        if overflow or abs(latest) > self.GROWTH * max(abs(self.first), 1e-12):
            return f"the loss grew from {self.first:.4g} to {latest:.4g} (step {step}) before: lower the learning rate"
        return (f"the loss was steady before ({self.first:.4g} at first, {latest:.4g} at step {step}), so the "
                f"learning rate is an unlikely cause: look at that term's inputs (a batch or shard of too few "
                f"samples, non-finite BatchNorm statistics)")

    def kept(self) -> str:
        if not self.last:
            return "no task had finished"
        from .io import load_checkpoint, nonfinite_tensors
        try:
            bad = nonfinite_tensors(load_checkpoint(self.last))
        except RdfcilError as err:
            return f"the checkpoint of the last finished task could not be read back ({err})"
        if bad:
            return (f"the checkpoint of the last finished task ({self.last}) holds non-finite tensors "
                    f"({', '.join(bad[:3])}): delete it to retrain that task")
        return f"the checkpoint of the last finished task ({self.last}) is intact (read back, every tensor finite)"


# --------------------------------------------------------------------------- settings

def check_setting(c: Config, bench: Benchmark, world: int) -> list[str]:
    """Refuse, before anything is trained, a batch too small for what the method's losses and
    BatchNorm need (:meth:`Method.batch_needs`; per process under ``torchrun``: a shard of
    ``batch // world`` images); return one warning line per loss term that a task's class count
    makes identically 0 (:meth:`Method.vanishing_losses`)."""
    method = METHODS[c.method]
    for t, classes in enumerate(bench.tasks):
        trained = bench.seen(t) if method.trains_on_seen and t else classes
        images = len(bench.train.indices(trained))
        batch = min(c.batch_size, images)
        unmet = [(need, what) for need, what in method.batch_needs(c) if batch // world < need]
        if unmet:
            need = max(n for n, _ in unmet)
            few = f"; task {t} has {images} training images" if images < c.batch_size else ""
            share = f"each of {world} processes gets {batch // world} of a batch of {batch}" if world > 1 \
                else f"a batch holds {batch}"
            raise RdfcilError(f"{' and '.join(f'{what} needs {n}' for n, what in unmet)} images per process at "
                              f"least; {share}{few}; use batch_size {need * world} or more")
    inverted = "inversion_steps" in method.keys and c.inversion_steps > 0
    if inverted and (c.inversion_batch_size or c.batch_size) < 2:
        raise RdfcilError(f"the generator's BatchNorm needs at least 2 images per inversion batch; "
                          f"inversion_batch_size is {c.inversion_batch_size or c.batch_size}")
    tasks_of: dict[str, list[int]] = {}
    for t, classes in enumerate(bench.tasks):
        for term in method.vanishing_losses(c, t, classes.start, len(classes)):
            tasks_of.setdefault(term, []).append(t)
    return [f"{c.method}: task{'s' if len(ts) > 1 else ''} {', '.join(map(str, ts))} hold{'' if len(ts) > 1 else 's'} "
            f"one class, so its loss term {term} is identically 0 there" for term, ts in tasks_of.items()]


def warn(record: dict, line: str, show: bool = True) -> None:
    """Print ``warning: <line>`` (stderr) and keep the line in ``record["warnings"]`` (results.json)."""
    if show:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    if line not in record.setdefault("warnings", []):
        record["warnings"].append(line)


def coverage_warning(t: int, info: dict) -> str | None:
    """One line when the synthetic labels made after task ``t`` miss seen classes."""
    coverage = info.get("class_coverage") or []
    missed = [k for k, n in enumerate(coverage) if n == 0]
    if not missed:
        return None
    shown = ", ".join(map(str, missed[:10])) + (f" and {len(missed) - 10} more" if len(missed) > 10 else "")
    return (f"the synthetic labels after task {t} cover {len(coverage) - len(missed)} of {len(coverage)} seen "
            f"classes (none of {sum(coverage)} samples is labelled {shown}): replay cannot recall those classes; "
            f"more inversion_steps usually cover them")


# --------------------------------------------------------------------------- training

def batches_per_epoch(phase: Phase, bench: Benchmark, config: Config) -> int:
    """Steps of one epoch of ``phase``: its full batches of real images, or ``phase.num_batches()``
    for a phase on features the method supplies."""
    if phase.batches is not None:
        return phase.num_batches()
    return bench.train.num_batches(phase.classes, config.batch_size, drop_last=True)


def phase_steps(phase: Phase, bench: Benchmark, config: Config) -> int:
    """Optimisation steps of ``phase``: its epochs x full batches per epoch."""
    return phase.epochs * batches_per_epoch(phase, bench, config)


def training_step(phase: Phase, optimizer: torch.optim.Optimizer, device: torch.device, precision: str,
                  graphs: bool, ddp: Distributed | None = None):
    """One SGD step of ``phase`` as a function ``step(x, y) -> terms``: ``terms = phase.loss(x, y)``
    under ``precision``'s autocast (in :func:`graphs.step_function` with ``graphs``), then
    ``sum(terms).backward()``, gradients averaged over the processes, ``optimizer.step()``. The
    terms are returned as device tensors (nothing read back to the host)."""
    ddp = ddp or Distributed()
    autocast = autocast_for(device, precision)
    step_loss = step_function(phase.loss, device, graphs)  # whole-step graphs on CUDA

    def step(x: torch.Tensor, y: torch.Tensor) -> dict:
        with autocast:
            terms = step_loss(x, y)
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        ddp.average_gradients(phase.parameters)
        optimizer.step()
        return terms
    return step


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(phase: Phase, config: Config, device: torch.device) -> torch.optim.Optimizer:
    """The phase's optimiser over ``phase.parameters`` at ``phase.lr``: SGD with the run's
    ``momentum`` (PyTorch's form: ``v <- momentum v + g + wd p``, ``p <- p - lr v``), or Adam
    (betas 0.9, 0.999, eps 1e-8, L2 weight decay added to the gradient as ``torch.optim.Adam``
    does, as EFC's code uses it). Weight decay: ``phase.weight_decay``, else the run's.
    Raises ``ValueError`` for another name."""
    weight_decay = config.weight_decay if phase.weight_decay is None else phase.weight_decay
    fused = fused_optimizer(device, config.graphs)
    if phase.optimizer == "sgd":
        return torch.optim.SGD(phase.parameters, lr=phase.lr, momentum=config.momentum, weight_decay=weight_decay, **fused)
    if phase.optimizer == "adam":
        return torch.optim.Adam(phase.parameters, lr=phase.lr, weight_decay=weight_decay, **fused)
    raise ValueError(f"phase '{phase.name}': optimizer '{phase.optimizer}' is not one of {', '.join(OPTIMIZERS)}")


def train_phase(model, phase: Phase, bench: Benchmark, config: Config, generator: torch.Generator,
                task: int, progress, last_checkpoint: str | None,
                ddp: Distributed | None = None, logger: NullLogger | None = None,
                log_offset: int = 0) -> dict[str, list[float]]:
    """``phase.optimizer`` (:func:`make_optimizer`) over ``phase.parameters``; returns per-epoch mean terms.
    Under ``torchrun`` each process trains on its shard of every batch, gradients averaged.
    The terms stay on the device and are read back every ``config.sync_interval`` steps and at
    each epoch's end (:class:`StepRecord`: no host sync inside a step); then the finite check
    runs, and every ``config.log_interval``-th step's terms and lr go to ``logger`` as
    ``train/<phase>/<term>`` at step ``log_offset + step``."""
    ddp = ddp or Distributed()
    logger = logger or NullLogger()
    interval = max(config.log_interval, 1)
    optimizer = make_optimizer(phase, config, model.device)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, phase.milestones, gamma=config.lr_decay)
    augment = augments(bench, config)
    record = StepRecord(config.sync_interval, FiniteCheck(task, phase.name, last_checkpoint))
    train_step = training_step(phase, optimizer, model.device, precision_of(config, phase.name), config.graphs, ddp)
    steps_per_epoch = batches_per_epoch(phase, bench, config)
    description = f"task {task} (of {config.num_tasks}) {phase.name}"
    bar = progress(phase.epochs * steps_per_epoch, description) if progress else None
    history: dict[str, list[float]] = {}
    step = 0
    for epoch in range(phase.epochs):
        if bar is not None:
            bar.set_description(f"{description} epoch {epoch + 1}/{phase.epochs}")
        model.train(phase.train_backbone)
        for module in phase.modules:
            module.train()
        sums: dict[str, float] = {}
        batches = 0

        def take(flushed) -> None:  # the floats of a block of steps: epoch sums, logger, bar
            for at, values in flushed:
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value
                if logger.enabled and at % interval == 0:
                    prefix = f"train/{phase.name}/"
                    logger.scalars({**{prefix + k: v for k, v in values.items()}, prefix + "total": sum(values.values()),
                                    prefix + "lr": schedule.get_last_lr()[0]}, log_offset + at)
            if flushed and bar is not None:
                bar.set_postfix(loss=f"{sum(flushed[-1][1].values()):.3f}", lr=f"{schedule.get_last_lr()[0]:.3g}")

        epoch_batches = phase.batches(generator) if phase.batches is not None else \
            bench.train.batches(phase.classes, config.batch_size, shuffle=True, augment=augment,
                                generator=generator, drop_last=True)
        for x, y in epoch_batches:
            take(record.add(step, train_step(ddp.shard(x), ddp.shard(y))))
            batches += 1
            step += 1
            if bar is not None:
                bar.update(1)
        take(record.flush())
        schedule.step()
        if phase.on_epoch_end is not None:
            phase.on_epoch_end()
        for name, value in sums.items():
            history.setdefault(name, []).append(value / max(batches, 1))
    optimizer.zero_grad(set_to_none=True)  # no gradient left in a compiled step's memory pool
    ddp.broadcast_state(model)  # the same BatchNorm statistics on every process
    model.eval()
    return history


@torch.no_grad()
def evaluate(model, bench: Benchmark, seen: range, batch_size: int, precision: str = "fp32",
             ddp: Distributed | None = None, method: Method | None = None) -> np.ndarray:
    """Confusion matrix over the seen classes: argmax over every seen class score, no task id
    (under ``torchrun`` each process scores its shard and the matrices are summed). The scores
    are ``method.scores(x)`` when a method is given (its classifier), else the model's logits."""
    ddp = ddp or Distributed()
    model.eval()
    score = method.scores if method is not None else model
    targets, predictions = [], []
    device = model.device
    for x, y in bench.test.batches(seen, batch_size):
        with autocast_for(device, precision):
            logits = score(ddp.shard(x))[:, :seen.stop]
        targets.append(ddp.shard(y).cpu())
        predictions.append(logits.argmax(dim=1).cpu())
    confusion = torch.as_tensor(confusion_matrix(torch.cat(targets), torch.cat(predictions), seen.stop))
    if ddp.enabled:
        confusion = ddp.sum(confusion.to(device)).cpu()
    return confusion.numpy()


def _as_config(config) -> Config:
    if isinstance(config, Config):
        from .config import validate
        validate(config)
        return config
    return resolve(config or {})


def run(config: Config | dict | None = None, resume: bool = True, force: bool = False) -> Results:
    """Learn the tasks of ``config`` in order; evaluate after each; write the run folder.

    ``resume``: continue after the last finished task of an existing run folder (its stored
    config must match). A finished run is reused, not retrained, unless ``force``; a line says
    so. Reuse and resume check the checkpoints the record names (present, at their recorded
    sizes): a missing or changed one is retrained alone from the one before it.
    ``config.threads`` sets the CPU threads for the run (restored afterwards); the count used
    is recorded per task and compared on resume and reuse (one line when it differs).
    Under ``torchrun`` the processes train data-parallel (see ``distributed.py``).
    The run folder is locked for the whole run (``lock.py``): one writer per folder.
    """
    c = _as_config(config)
    threads = torch.get_num_threads()
    try:
        if c.threads:
            torch.set_num_threads(c.threads)
        with folder_lock(Path(c.out or default_out(c)), enabled=rank_zero()):
            return _run(c, resume, force)
    finally:
        torch.set_num_threads(threads)


def select_device(c: Config, ddp: Distributed) -> torch.device:
    """This process's device (``cuda:i`` with its index on CUDA: ``cuda:LOCAL_RANK`` under
    torchrun), made current with ``torch.cuda.set_device``, the run's CUDA numerics policy
    (``tf32``, ``deterministic``) applied."""
    device = ddp.device(pick_device(c.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        set_cuda_numerics(c.tf32, c.deterministic)
    return device


def run_model(c: Config, spec, device: torch.device, channels_last: bool = True):
    """The model of a run as the run sets it up: built on ``device`` with its padded head,
    channels-last weights on CUDA (``channels_last=False``: left contiguous, for comparison),
    the backbone compiled with ``compile`` (in place: the state_dict keys stay the same). The
    benchmarks and ``check`` build theirs with it too."""
    model = model_for(c, spec, device)
    model = memory_format_for(model, device) if channels_last else model
    if c.compile:
        model.backbone.compile()
    return model


def _run(c: Config, resume: bool, force: bool) -> Results:
    ddp = Distributed.from_env(c.device)
    device = select_device(c, ddp)
    bench = load_benchmark(c, device)  # validates data, class order and split before any write
    warnings = check_setting(c, bench, ddp.world)
    folder = Path(c.out or default_out(c))
    start = prepare_folder(c, folder, resume, force, ddp)
    if isinstance(start, Damaged):
        return repair(c, folder, start, bench, device, ddp)
    if isinstance(start, Results):
        if ddp.is_main:
            say_reused(folder, start.data)
        return start

    torch.manual_seed(c.seed)
    model = run_model(c, bench.spec, device)
    method = build_method(c, model, bench.spec)
    record = new_record(c, bench)
    history: dict = {"tasks": []}
    if start:
        record, history = restore(folder, start, model, method, bench, c)
        note = threads_note(record, torch.get_num_threads())
        if note:
            warn(record, f"resumed at task {start}: {note}", ddp.is_main)
    for line in warnings:
        warn(record, line, ddp.is_main)
    record["cuda_numerics"] = {"tf32": c.tf32, "deterministic": c.deterministic, "applied": device.type == "cuda"}
    progress = make_progress(c.progress and ddp.is_main)
    logger = make_logger(c.logger, folder, ddp.is_main)
    summary = None
    try:
        logger.text("config", "```\n" + yaml.safe_dump(c.to_dict(), sort_keys=False) + "```")
        record = train_tasks(c, start, model, method, bench, folder, record, history, progress, logger, ddp)
        summary = time_summary(record["wall_seconds"], start)
    finally:
        logger.close()
        if progress is not None:
            progress.close(summary)
    ddp.barrier()
    return Results(record)


def say_reused(folder: Path, record: dict) -> None:
    """The line a reused run prints (and the thread-count note, if any): nothing was trained."""
    print(f"reused: '{folder}' holds this run, finished; not trained again (force=True or --force retrains it)",
          flush=True)
    note = threads_note(record, torch.get_num_threads())
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)


def time_summary(wall_seconds: list[dict], start: int = 0) -> str:
    """``trained tasks 0-4 in 41 s: base 5.1 s, rrl 20.3 s, ...``: the wall time of each phase
    (and stage: inversion, eval) summed over the tasks trained from ``start`` on."""
    totals: dict[str, float] = {}
    for timings in wall_seconds[start:]:
        for name, seconds in timings.items():
            totals[name] = totals.get(name, 0.0) + seconds
    last = len(wall_seconds) - 1
    tasks = f"task {start}" if last == start else f"tasks {start}-{last}"
    return (f"trained {tasks} in {sum(totals.values()):.1f} s: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in totals.items()))


def repair(c: Config, folder: Path, damaged: Damaged, bench: Benchmark, device, ddp: Distributed) -> Results:
    """Rewrite the missing or changed checkpoints of a finished run: each such task ``t`` is
    retrained alone from ``task_<t-1>.pt`` (its seeds are the run's, so the same numbers come
    back where the thread count and the device are the same) and only ``task_<t>.pt`` and the
    record's file sizes are written; a line says whether its accuracies match the record."""
    record = damaged.record
    for t, problem in sorted(damaged.tasks.items()):
        if ddp.is_main:
            print(f"note: {problem}; retraining task {t} alone{f' from task_{t - 1}.pt' if t else ''} to rewrite it",
                  file=sys.stderr, flush=True)
        torch.manual_seed(c.seed)
        model = memory_format_for(model_for(c, bench.spec, device), device)
        method = build_method(c, model, bench.spec)
        before = restore(folder, t, model, method, bench, c)[0] if t else new_record(c, bench)
        last = str(checkpoint_path(folder, t - 1)) if t else None
        progress = make_progress(c.progress and ddp.is_main)
        try:
            _, task_history = run_task(model, method, Task(t, bench.tasks[t], c.num_tasks), bench, c, progress, last,
                                       ddp)
        finally:
            if progress is not None:
                progress.close()
        add_task_metrics(before, task_history["confusion"], bench, t, task_history["end"])
        if ddp.is_main:
            save_task_checkpoint(folder, t, model, method, before, task_history["confusion"],
                                 task_history["snapshots"])
            same = before["accuracy_matrix"][t] == record["accuracy_matrix"][t]
            print(f"note: task_{t}.pt rewritten; its accuracies {'match' if same else 'differ from'} the record"
                  + ("" if same else f" ({before['accuracy_matrix'][t]} against {record['accuracy_matrix'][t]})"),
                  file=sys.stderr, flush=True)
    if ddp.is_main:
        record_files(folder, record, c.num_tasks - 1)
        write_json(folder / "results.json", record)
    ddp.barrier()
    return Results(record)


def train_tasks(c: Config, start: int, model, method: Method, bench: Benchmark, folder: Path, record: dict,
                history: dict, progress, logger: NullLogger, ddp: Distributed) -> dict:
    """Tasks ``start..T-1``: train, evaluate, log, write the checkpoint and results after each."""
    run_started = time.perf_counter() - sum(sum(t.values()) for t in record["wall_seconds"])
    for t in range(start, c.num_tasks):
        task = Task(t, bench.tasks[t], c.num_tasks)
        last = str(folder / f"task_{t - 1}.pt") if t else None
        timings, task_history = run_task(model, method, task, bench, c, progress, last, ddp, logger,
                                         record.get("train_steps", 0))
        record["train_steps"] = record.get("train_steps", 0) + task_history.pop("steps")
        record["wall_seconds"].append(timings)
        record.setdefault("compile_seconds", []).append(task_history.pop("compile_seconds"))
        history["tasks"].append(task_history)
        confusion = task_history.pop("confusion")
        snapshots = task_history.pop("snapshots")
        add_task_metrics(record, confusion, bench, t, task_history["end"])
        missed = coverage_warning(t, task_history["end"])
        if missed:
            warn(record, missed, ddp.is_main)
        log_task(logger, record, timings, t)
        record["wall_seconds_total"] = time.perf_counter() - run_started
        record["finished"] = t == c.num_tasks - 1
        record["processes"] = ddp.world
        record["classifier"] = method.classifier  # what made the predictions, named in the tables
        record["threads"] = record.get("threads", [])[:t] + [torch.get_num_threads()]
        if ddp.is_main:
            save_task(folder, t, model, method, record, history, confusion, snapshots)
    return record


def log_task(logger: NullLogger, record: dict, timings: dict, t: int) -> None:
    """After task ``t``: A_t, average incremental accuracy, old / new accuracy, the accuracy on
    each task so far, mean forgetting and the phases' wall times; then flush."""
    if not logger.enabled:
        return
    values = {"accuracy/A_t": record["accuracy_per_task"][t],
              "accuracy/average_incremental": record["average_incremental_accuracy"],
              "accuracy/new": record["new_accuracy"][t]}
    if record["old_accuracy"][t] is not None:
        values["accuracy/old"] = record["old_accuracy"][t]
    if record["forgetting"]:
        values["forgetting/mean"] = float(np.mean(record["forgetting"]))
    values |= {f"accuracy/task_{j}": a for j, a in enumerate(record["accuracy_matrix"][t])}
    values |= {f"wall_seconds/{name}": seconds for name, seconds in timings.items()}
    logger.scalars(values, t)
    logger.flush()


def augments(bench: Benchmark, c: Config) -> bool:
    """Whether the run's training images are augmented: ``c.augment``, else the dataset's default."""
    return bench.spec.crop_padding > 0 or bench.spec.flip if c.augment is None else c.augment


def statistics_batches(bench: Benchmark, task: Task, c: Config, ddp: Distributed):
    """``batches(shard=True, augment=False)`` for :meth:`Method.statistics`: the task's training
    images of ``task.classes`` once, in a fixed order, ``c.batch_size`` per batch, on the run's
    device; this process's shard of each batch under torchrun unless ``shard=False``. With
    ``augment`` (and a run that augments at all) each batch gets the training augmentation, drawn
    from one generator per pass seeded by ``(seed, task, 3)``: every process draws the same
    augmentation of the whole batch before taking its shard, so two processes see what one sees."""
    generator = torch.Generator().manual_seed(stage_seed(c.seed, task.index, 3))
    augmented = augments(bench, c)

    def batches(shard: bool = True, augment: bool = False):
        take = ddp.shard if shard else (lambda t: t)
        for x, y in bench.train.batches(task.classes, c.batch_size, shuffle=False, augment=augment and augmented,
                                        generator=generator):
            yield take(x), take(y)
    return batches


def statistics_pass(model, method: Method, task: Task, bench: Benchmark, c: Config,
                    ddp: Distributed | None = None) -> None:
    """The method's task-end statistics (:meth:`Method.statistics`): model in eval mode, no
    gradients, sums reduced over the processes with ``ddp.sum``."""
    ddp = ddp or Distributed()
    model.eval()
    with torch.no_grad():
        method.statistics(task, statistics_batches(bench, task, c, ddp), ddp.sum)


def run_task(model, method: Method, task: Task, bench: Benchmark, c: Config, progress, last,
             ddp: Distributed | None = None, logger: NullLogger | None = None, log_offset: int = 0):
    """Train, end (freeze / invert) and evaluate one task; returns timings and histories
    (``task_history["steps"]``: the training steps it took, for the logger's x axis;
    ``task_history["compile_seconds"]``: per phase, the seconds of its wall time torch spent
    compiling, :func:`graphs.compile_seconds`).

    Order: the phases on images, the method's statistics pass (``statistics`` in the timings,
    if ``needs_statistics``), the phases on features the method supplies, ``end_task``, the
    evaluation with ``method.scores``. A task may have no phase at all (a frozen backbone)."""
    ddp = ddp or Distributed()
    logger = logger or NullLogger()
    timings: dict[str, float] = {}
    compiled: dict[str, float] = {}
    task_history: dict = {"phases": {}, "compile_seconds": compiled}
    generator = seed_everything(stage_seed(c.seed, task.index, 0))
    if not method.task_invariant_steps:
        new_task(model.device, c.graphs)  # this task's steps compile anew (graphs.py)
    model.head.add_task(task.n_new)  # after seeding: a resumed run draws the same initial weights
    method.set_shard(ddp.shard)
    method.begin_task(task)
    phases = method.phases(task)
    task_history["snapshots"] = {}
    steps = 0
    statistics_at = next((i for i, phase in enumerate(phases) if phase.batches is not None), len(phases))
    for i, phase in enumerate(phases + [None]):
        if i == statistics_at and method.needs_statistics(task):
            started = time.perf_counter()
            statistics_pass(model, method, task, bench, c, ddp)
            timings["statistics"] = time.perf_counter() - started
        if phase is None:
            break
        started, compiling = time.perf_counter(), compile_seconds()
        task_history["phases"][phase.name] = train_phase(model, phase, bench, c, generator, task.index,
                                                         progress, last, ddp, logger, log_offset + steps)
        steps += phase_steps(phase, bench, c)
        timings[phase.name] = timings.get(phase.name, 0.0) + time.perf_counter() - started
        compiled[phase.name] = compiled.get(phase.name, 0.0) + compile_seconds() - compiling
        if i < len(phases) - 1:  # e.g. after RRL, before refinement: kept for the notebooks
            task_history["snapshots"][phase.name] = {
                "confusion": torch.as_tensor(evaluate(model, bench, task.seen, c.eval_batch_size, c.precision, ddp)),
                "head": model.head.weight.detach().cpu().clone()}
    started, compiling = time.perf_counter(), compile_seconds()
    seed_everything(stage_seed(c.seed, task.index, 1))
    end = method.end_task(task, progress, FiniteCheck(task.index, "inversion", last))
    for module in method.synchronised_modules():
        ddp.broadcast_state(module)
    for stage, stage_history in end.histories.items():  # one stage per task end today: the inversion
        timings[stage] = time.perf_counter() - started
        compiled[stage] = compile_seconds() - compiling
        task_history[stage] = stage_history
    if "inversion" in end.histories:
        log_inversion(logger, method, task, bench, c, end.histories["inversion"], end.info)
    task_history["end"] = end.info
    task_history["steps"] = steps
    started = time.perf_counter()
    task_history["confusion"] = evaluate(model, bench, task.seen, c.eval_batch_size, c.precision, ddp, method)
    timings["eval"] = time.perf_counter() - started
    return timings, task_history


def log_inversion(logger: NullLogger, method: Method, task: Task, bench: Benchmark, c: Config,
                  inversion: dict, info: dict) -> None:
    """The inversion's loss terms every ``log_interval`` steps (``inversion/<term>``, x axis
    ``task * inversion_steps + step``), the class coverage of the synthetic labels and a grid
    of synthetic images drawn in a forked random state (``synthetic/*``, x axis the task)."""
    if not logger.enabled:
        return
    for step, values in every(inversion, c.log_interval, task.index * c.inversion_steps, "inversion/"):
        logger.scalars(values, step)
    coverage = info.get("class_coverage") or []
    if coverage:
        logger.scalars({"synthetic/classes_covered": float(sum(1 for n in coverage if n > 0)),
                        "synthetic/least_class_share": min(coverage) / max(sum(coverage), 1)}, task.index)
        labels = np.repeat(np.arange(len(coverage)), coverage)
        logger.histogram("synthetic/labels", labels, task.index)
    grid = synthetic_grid(method.inversion.generator, method.old_model, task.seen.stop, bench.test.denormalize,
                          seed=stage_seed(c.seed, task.index, 2))
    logger.images("synthetic/images", grid, task.index)


