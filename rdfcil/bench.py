"""Accuracy benchmark: every method x seed on one dataset, a table of mean +- std.

Runs are ordinary run folders under ``<out>/<method>-seed<k>``, so a repeated benchmark reuses
the finished ones. The table (Markdown, CSV, JSON) is written into ``<out>``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .config import METHODS, resolve
from .engine import Results, run
from .io import atomic_write_text, write_json


def sweep(dataset: str, methods, seeds, out: str | Path, overrides: dict | None = None,
          force: bool = False, jobs: int | None = None) -> list[Results]:
    """Run (or reuse) each method with each seed; returns every run's results. ``jobs``: runs
    at a time per device as separate processes (``rdfcil.sweep``); 0: one after another here."""
    out = Path(out)
    configs = [resolve({**(overrides or {}), "dataset": dataset, "method": m, "seed": s,
                        "out": str(out / f"{m}-seed{s}")}) for m in methods for s in seeds]
    if jobs == 0:
        return [run(c, force=force) for c in configs]  # all validated before the first run starts
    from .sweep import run_all
    return run_all(configs, jobs=jobs, force=force)


def summary_rows(results: list[Results]) -> list[dict]:
    """One row per method: final and average incremental accuracy, mean and std over seeds."""
    rows = []
    for method in dict.fromkeys(r.method for r in results):
        mine = [r for r in results if r.method == method]
        final = np.array([r.final_accuracy for r in mine])
        average = np.array([r.average_incremental_accuracy for r in mine])
        seconds = np.array([r.wall_seconds_total for r in mine])
        rows.append({"method": method, "seeds": [r.seed for r in mine],
                     "final_mean": float(final.mean()), "final_std": float(final.std(ddof=1)) if len(mine) > 1 else 0.0,
                     "avg_mean": float(average.mean()), "avg_std": float(average.std(ddof=1)) if len(mine) > 1 else 0.0,
                     "seconds_mean": float(seconds.mean())})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | final accuracy (%) | average incremental accuracy (%) | seeds | wall time per run (s) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['final_mean']:.2f} ± {r['final_std']:.2f} | "
                     f"{r['avg_mean']:.2f} ± {r['avg_std']:.2f} | {len(r['seeds'])} | {r['seconds_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out: str | Path) -> dict[str, Path]:
    out = Path(out)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["method", "final_mean", "final_std", "avg_mean", "avg_std",
                                                "seconds_mean", "seeds"])
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "seeds": " ".join(map(str, r["seeds"]))})
    paths = {"md": out / "accuracy.md", "csv": out / "accuracy.csv", "json": out / "accuracy.json"}
    atomic_write_text(paths["md"], markdown_table(rows))
    atomic_write_text(paths["csv"], buffer.getvalue())
    write_json(paths["json"], rows)
    return paths


def bench_accuracy(dataset: str, seeds, out: str | Path, methods=METHODS, overrides: dict | None = None,
                   force: bool = False, jobs: int | None = None) -> tuple[str, dict]:
    results = sweep(dataset, methods, seeds, out, overrides, force, jobs)
    rows = summary_rows(results)
    return markdown_table(rows), write_tables(rows, out)
