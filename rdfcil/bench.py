"""Accuracy benchmark: every method x seed on one dataset, a table of mean +- std.

Runs are ordinary run folders under ``<out>/<run_name>`` (``runs.run_name``: ``rdfcil-5tasks-seed0``), so a repeated benchmark reuses
the finished ones. The table (:mod:`rdfcil.tables`: Markdown, CSV, JSON) is written into
``<out>/accuracy.*``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import method_names, resolve
from .runs import Results, run_name
from . import tables


def sweep(dataset: str, methods, seeds, out: str | Path, overrides: dict | None = None,
          force: bool = False, jobs: int | None = None, protocol: str = "half-base") -> list[Results]:
    """Run (or reuse) each method with each seed; returns every run's results. ``jobs``: runs
    at a time per device as separate processes (``rdfcil.sweep``); 0: one after another here.
    ``protocol`` "cold-start": every task count of the dataset's cold-start plan (or the one of
    ``overrides``) in equal tasks, with its backbone and schedule under ``overrides``
    (``paper.COLD_START``); "half-base": the runs as configured (``overrides`` and the preset)."""
    from .paper import defaults, protocol_values
    out = Path(out)
    extra = protocol_values(dataset, protocol)
    counts = [overrides["num_tasks"]] if "num_tasks" in (overrides or {}) else defaults(dataset, protocol)["task_counts"]
    splits = [{}] if protocol == "half-base" else [{"num_tasks": t, "first_task_classes": None} for t in counts]
    configs = [resolve({**extra["overrides"], **(overrides or {}), **split, "dataset": dataset, "method": m,
                        "seed": s})
               for split in splits for m in methods for s in seeds]
    for c in configs:
        if extra["notes"]:
            c.notes = "; ".join(n for n in (c.notes, extra["notes"]) if n)
        c.out = str(out / run_name(c))
    from .sweep import run_grid
    return run_grid(configs, jobs=jobs, force=force)


def bench_accuracy(dataset: str, seeds, out: str | Path, methods=None, overrides: dict | None = None,
                   force: bool = False, jobs: int | None = None, protocol: str = "half-base") -> tuple[str, dict]:
    from .runtable import collect
    results = sweep(dataset, methods or method_names(), seeds, out, overrides, force, jobs, protocol)
    from .provenance import line, stamp
    folders = [r.config["out"] for r in results]  # this sweep's run folders
    rows = tables.summary_rows(collect(folders))
    from .sweep import GRID_THREADS
    made = stamp(folders=folders, threads=torch.get_num_threads() if jobs == 0 else GRID_THREADS)
    paths = tables.write_tables(rows, Path(out) / "accuracy", ("md", "csv", "json"), published=False, seconds=True,
                                stamp=made)
    return tables.markdown_table(rows, published=False, seconds=True) + "\n" + line(made) + "\n", paths
