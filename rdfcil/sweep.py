"""A grid of runs executed as separate processes: a local pool, or SLURM through submitit.

``run_all(configs, jobs=...)`` runs every config as its own ``python -m rdfcil run`` process,
``jobs`` at a time per device (default: 1 on the CPU, 4 per GPU), longest expected run first
(:func:`expected_work`), spread over every visible GPU
(one ``CUDA_VISIBLE_DEVICES`` per worker). On the CPU every run computes with a fixed thread
count, its config's ``threads`` or :data:`GRID_THREADS`, whatever ``jobs`` is (default: as many
runs as the cores hold), since a CPU result's last digits depend on the thread count. The parent
only schedules and collects: each child owns its run folder under the folder's lock
(``lock.py``) and seeds itself from its config, so the numbers are those of the same runs made
one at a time. A finished run folder
whose config matches is reused without starting a process. A failed run is reported with its
one-line error (``error: ...`` on the child's stderr) and the others go on; ``run_all`` raises one
``RdfcilError`` naming the failures once every run has ended (``execute`` returns them instead).

``executor="slurm"`` submits one SLURM job per run through ``submitit`` (``pip install
rdfcil[slurm]``; ``partition``, ``gpus``, ``cpus``, ``time`` in minutes, ``slurm`` for any further
``slurm_*`` parameter), ``executor="local"`` the same jobs through ``submitit.LocalExecutor`` (the
cluster path, tested without a cluster). Results are read back from the run folders.

The progress display (:mod:`rdfcil.progress`: text in a terminal, a widget in JupyterLab, one
line in a notebook run by papermill or nbval) shows the whole
grid: runs done / running / failed, and the task each running run is on (from the length of its
``results.json`` ``accuracy_per_task``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .config import Config, resolve
from .runs import Results, default_out, finished_results, threads_note
from .errors import RdfcilError
from .io import read_json, write_yaml
from .progress import make_bar

EXECUTORS = ("pool", "local", "slurm")


@dataclass
class Outcome:
    """How one run of a sweep ended: its results, or its one-line error."""
    config: Config
    results: Results | None = None
    error: str | None = None
    reused: bool = False

    @property
    def name(self) -> str:
        return Path(self.config.out).name


# --------------------------------------------------------------------------- helpers

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus(configs) -> list[str]:
    """The GPUs the grid uses, as ``CUDA_VISIBLE_DEVICES`` entries (the caller's own list, if it
    set one); none when CUDA is absent or every run asks for the CPU."""
    import torch
    if not torch.cuda.is_available() or all(c.device == "cpu" for c in configs):
        return []
    count = torch.cuda.device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


GRID_THREADS = 1  # CPU threads of each run of a grid on the CPU whose config sets none


def with_grid_threads(configs: list[Config]) -> list[Config]:
    """The configs of a grid on the CPU, each with its thread count fixed (``threads``, else
    :data:`GRID_THREADS`), whatever ``jobs`` is: a CPU result's last digits depend on the
    thread count, so a grid gives the same numbers one run at a time or many."""
    import dataclasses
    return [c if c.threads else dataclasses.replace(c, threads=GRID_THREADS) for c in configs]


def default_jobs(gpus: list, configs: list[Config] = ()) -> int:
    """Runs at a time per device: 4 per GPU (small models leave a GPU mostly idle); on the CPU
    as many as the cores hold at the runs' thread counts."""
    if gpus:
        return 4
    return max(1, cpu_count() // max([c.threads or GRID_THREADS for c in configs] or [GRID_THREADS]))


def checked(configs) -> list[Config]:
    """Validated configs with their run folders set; two runs may not share a folder."""
    out = []
    for c in configs:
        c = resolve(c) if isinstance(c, dict) else c
        if not c.out:
            c.out = default_out(c)
        out.append(c)
    seen: dict[str, int] = {}
    for i, c in enumerate(out):
        key = str(Path(c.out).absolute())
        if key in seen:
            raise RdfcilError(f"runs {seen[key]} and {i} of the sweep share the run folder '{c.out}'; give each its own out")
        seen[key] = i
    return out


def reused_outcomes(configs: list[Config], force: bool) -> tuple[dict[int, "Outcome"], list[int]]:
    """The outcomes of the configs whose folders hold their finished run (none with ``force``),
    and the indices of the others, to be run."""
    outcomes, todo = {}, []
    for i, c in enumerate(configs):
        reused = None if force else finished_results(c)
        if reused is not None:
            outcomes[i] = Outcome(c, reused, reused=True)
            note = threads_note(reused.data, c.threads) if c.threads else None
            if note:
                print(f"note: {note}", file=sys.stderr, flush=True)
        else:
            todo.append(i)
    return outcomes, todo


def expected_work(c: Config) -> float:
    """A run's work in image passes (a forward counts 1, a forward+backward 3), to start the
    longest runs of a grid first: ``W = sum_t E_t N_t p + (T - 1) S B 4``, with ``E_t`` the
    epochs of task t (``epochs - refinement_epochs`` for the base task), ``N_t`` its training
    images (``train_per_class`` of the config or the dataset, times its new classes, or its
    seen classes for a method that ``trains_on_seen``), ``p`` the passes per real image (3; +1
    for an old-model forward; +6 with synthetic replay: the synthetic batch's forward+backward,
    the old model's forwards, the generator's forward) and ``S`` inversion steps of batch ``B``
    (a generator and an old-model forward+backward: 4) after every task but the last."""
    from .data import dataset_spec
    from .methods import METHODS
    method, spec = METHODS[c.method], dataset_spec(c.dataset)
    inverts = "inversion_steps" in method.keys
    per_class = c.train_per_class or spec.train_per_class
    first = c.first_task_classes or spec.num_classes // c.num_tasks
    new = [first] + [(spec.num_classes - first) // max(c.num_tasks - 1, 1)] * (c.num_tasks - 1)
    passes = 3 + (6 if inverts else 1 if method.keeps_old_model else 0)
    work = 0.0
    for t, classes in enumerate(new):
        epochs = c.epochs - c.refinement_epochs if t == 0 else c.epochs
        images = per_class * (sum(new[:t + 1]) if method.trains_on_seen else classes)
        work += epochs * images * (3 if t == 0 else passes)
    if inverts:
        work += (c.num_tasks - 1) * c.inversion_steps * (c.inversion_batch_size or c.batch_size) * 4
    return work


def longest_first(configs: list[Config], indices: list[int]) -> list[int]:
    """``indices`` ordered by :func:`expected_work`, most first (ties in grid order): a grid on
    ``jobs`` workers then ends with short runs side by side, not one long run alone."""
    return sorted(indices, key=lambda i: -expected_work(configs[i]))


def task_of(c: Config) -> str:
    """'task k/T' of a running run: the task after its last one in results.json."""
    try:
        done = len(read_json(Path(c.out) / "results.json").get("accuracy_per_task", []))
    except RdfcilError:
        done = 0
    return f"task {min(done + 1, c.num_tasks)}/{c.num_tasks}"


def finished_line(outcome: "Outcome") -> str:
    """``finished <run>: final <A_T> %, <s> s``: a line per run that ended well."""
    r = outcome.results.data
    seconds = r.get("wall_seconds_total")
    return (f"finished {outcome.name}: final {r['final_accuracy']:.2f} %"
            + (f", {seconds:.0f} s" if seconds is not None else ""))


def error_line(stderr: str, returncode: int) -> str:
    """The child's ``error: ...`` line, else its last line, with the exit status."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    last = lines[-1] if lines else "no output"
    return f"exit status {returncode}: {last[:300]}"


class Display:
    """One line for the whole grid: done / running / failed, and each running run's task."""

    def __init__(self, total: int, enabled: bool):
        self.bar, self.shown, self.at = None, None, 0.0
        if enabled:
            self.bar = make_bar(total, "sweep", unit="run", leave=True)

    def update(self, outcomes: dict, running: dict[int, Config], failed: int) -> None:
        if self.bar is None:
            return
        tasks = ", ".join(f"{Path(c.out).name} {task_of(c)}" for c in running.values())
        line = f"running {len(running)}, failed {failed}" + (f" | {tasks}" if tasks else "")
        if (len(outcomes), line) == self.shown and time.time() - self.at < 10:
            return  # redrawn when something changed, else every 10 s (the elapsed time)
        self.shown, self.at = (len(outcomes), line), time.time()
        self.bar.n = len(outcomes)
        self.bar.set_postfix_str(line, refresh=True)

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- the local pool

def child_environment(gpu: str | None, threads: int | None) -> dict:
    env = dict(os.environ)
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_pool(configs: list[Config], jobs: int | None = None, force: bool = False, progress: bool = True,
             poll: float = 0.5) -> list[Outcome]:
    """Every config as a ``python -m rdfcil run`` process, ``jobs`` at a time per device."""
    gpus = visible_gpus(configs)
    if not gpus:
        configs = with_grid_threads(configs)
    jobs = jobs or default_jobs(gpus, configs)
    if jobs < 1:
        raise RdfcilError(f"jobs must be a positive integer, got {jobs!r}")
    slots = [g for g in gpus for _ in range(jobs)] if gpus else [None] * jobs
    outcomes, todo = reused_outcomes(configs, force)
    pending = deque(longest_first(configs, todo))
    running: dict[int, tuple] = {}
    display = Display(len(configs), progress)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="rdfcil-sweep-") as tmp:
        try:
            while pending or running:
                while pending and slots:
                    i = pending.popleft()
                    slot = slots.pop(0)
                    c = configs[i]
                    values = c.to_dict() | {"progress": False}
                    if slot is not None and str(c.device).startswith("cuda:"):
                        values["device"] = "cuda"  # the one GPU this worker sees
                    write_yaml(Path(tmp) / f"{i}.yaml", values)
                    stderr = open(Path(tmp) / f"{i}.err", "w+")
                    command = [sys.executable, "-m", "rdfcil", "run", "--config", str(Path(tmp) / f"{i}.yaml")]
                    if force:
                        command.append("--force")
                    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                               env=child_environment(slot, c.threads))
                    running[i] = (process, slot, stderr)
                display.update(outcomes, {i: configs[i] for i in running}, failed)
                time.sleep(poll)
                for i, (process, slot, stderr) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[i]
                    slots.append(slot)
                    stderr.seek(0)
                    text = stderr.read()
                    stderr.close()
                    if process.returncode == 0:
                        outcomes[i] = Outcome(configs[i], Results.load(configs[i].out))
                        display.say(finished_line(outcomes[i]))
                    else:
                        failed += 1
                        outcomes[i] = Outcome(configs[i], error=error_line(text, process.returncode))
                        display.say(f"failed: {configs[i].out}: {outcomes[i].error}")
            display.update(outcomes, {}, failed)
        finally:
            stop(running)
            display.close()
    return [outcomes[i] for i in range(len(configs))]


def stop(running: dict) -> None:
    """Interrupted: SIGINT to every child (each saves its finished tasks), then wait."""
    for process, _, _ in running.values():
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process, _, stderr in running.values():
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr.close()


# --------------------------------------------------------------------------- submitit (SLURM)

def run_one(values: dict, force: bool = False) -> str:
    """What one submitted job runs: the run of ``values`` (a config dict); returns its folder."""
    from .engine import run
    run(Config(**values), force=force)
    return values["out"]


def submitit_executor(kind: str, folder: Path, partition: str | None, gpus: int, cpus: int | None,
                      time_minutes: int, parallel: int | None, slurm: dict | None):
    try:
        import submitit
    except ImportError:
        raise RdfcilError("executor 'slurm' needs submitit: pip install 'rdfcil[slurm]' (or pip install submitit)") from None
    if kind == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=time_minutes, gpus_per_node=gpus)
        return executor
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    except RuntimeError as err:  # no srun here
        raise RdfcilError(f"executor 'slurm': {err} (executor='local' runs the same jobs on this machine)") from None
    params = {"timeout_min": time_minutes, "gpus_per_node": gpus, "tasks_per_node": 1, "nodes": 1,
              "name": "rdfcil"}
    if partition:
        params["slurm_partition"] = partition
    if cpus:
        params["cpus_per_task"] = cpus
    if parallel:
        params["slurm_array_parallelism"] = parallel
    params.update(slurm or {})
    executor.update_parameters(**params)
    return executor


def run_submitit(configs: list[Config], kind: str = "slurm", force: bool = False, progress: bool = True,
                 partition: str | None = None, gpus: int = 1, cpus: int | None = None, time: int = 24 * 60,
                 jobs: int | None = None, log_dir: str | Path | None = None, slurm: dict | None = None,
                 poll: float = 5.0) -> list[Outcome]:
    """One submitit job per run not already finished; waits, then reads the run folders."""
    import time as clock
    outcomes, todo = reused_outcomes(configs, force)
    log_dir = Path(log_dir or Path(configs[0].out).absolute().parent / ".submitit") if configs else Path(".")
    jobs_of: dict[int, object] = {}
    if todo:
        executor = submitit_executor(kind, log_dir, partition, gpus, cpus, time, jobs, slurm)
        with executor.batch():
            submitted = [executor.submit(run_one, configs[i].to_dict() | {"progress": False}, force) for i in todo]
        jobs_of = dict(zip(todo, submitted))
    display = Display(len(configs), progress)
    failed = 0
    try:
        while True:
            for i, job in list(jobs_of.items()):
                if i in outcomes or not job.done():
                    continue
                try:
                    job.result()
                    outcomes[i] = Outcome(configs[i], Results.load(configs[i].out))
                    display.say(finished_line(outcomes[i]))
                except Exception as err:  # submitit wraps the job's exception with its log
                    failed += 1
                    outcomes[i] = Outcome(configs[i], error=job_error(err))
                    display.say(f"failed: {configs[i].out}: {outcomes[i].error} (job {job.job_id})")
            running = {i: configs[i] for i in jobs_of if i not in outcomes}
            display.update(outcomes, running, failed)
            if not running:
                break
            clock.sleep(poll)
    finally:
        display.close()
    return [outcomes[i] for i in range(len(configs))]


def job_error(err: Exception) -> str:
    """The one line of a failed job: its RdfcilError message where there is one."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        if "RdfcilError: " in line:
            return line.split("RdfcilError: ", 1)[1]
    if isinstance(err, RdfcilError):
        return str(err)
    return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"


# --------------------------------------------------------------------------- entry points

def execute(configs, jobs: int | None = None, executor: str = "pool", force: bool = False, progress: bool = True,
            **cluster) -> list[Outcome]:
    """Run every config (see the module docstring); one ``Outcome`` per config, in order."""
    if executor not in EXECUTORS:
        raise RdfcilError(f"unknown executor '{executor}'; valid: {', '.join(EXECUTORS)}")
    configs = checked(configs)
    if executor == "pool":
        if cluster:
            raise RdfcilError(f"{', '.join(cluster)} apply to executor 'slurm' or 'local', not 'pool'")
        return run_pool(configs, jobs, force, progress)
    return run_submitit(configs, executor, force, progress, jobs=jobs, **cluster)


def run_grid(configs, jobs: int | None = None, force: bool = False, progress: bool = True) -> list[Results]:
    """Every run's Results, in order: ``jobs`` runs at a time per device as separate processes
    (:func:`run_all`; None: 1 on the CPU, 4 per GPU), or with ``jobs=0`` one after another in this
    process (each with its own progress bar). Every config is validated before the first run."""
    if jobs == 0:
        from .engine import run
        configs = checked(configs)
        return [run(c, force=force) for c in (configs if visible_gpus(configs) else with_grid_threads(configs))]
    return run_all(configs, jobs=jobs, force=force, progress=progress)


def run_all(configs, jobs: int | None = None, executor: str = "pool", force: bool = False, progress: bool = True,
            **cluster) -> list[Results]:
    """Every run's Results, in order; one ``RdfcilError`` naming the failed runs (after all ended)."""
    outcomes = execute(configs, jobs, executor, force, progress, **cluster)
    bad = [o for o in outcomes if o.error is not None]
    if bad:
        raise RdfcilError(f"{len(bad)} of {len(outcomes)} runs failed: "
                          + "; ".join(f"{o.config.out}: {o.error}" for o in bad))
    return [o.results for o in outcomes]

