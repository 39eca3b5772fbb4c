"""Accuracy benchmark: every method x seed on one dataset, a table of mean +- std.

Runs are ordinary run folders under ``<out>/<method>-seed<k>``, so a repeated benchmark reuses
the finished ones. The table (Markdown, CSV, JSON) is written into ``<out>``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

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


def summary_rows(results) -> list[dict]:
    """One row per method: final and average incremental accuracy, mean and std over seeds.
    ``results``: Results of a sweep, or a table from :func:`rdfcil.collect` (one row per run)."""
    from .runtable import frame
    table = results if hasattr(results, "groupby") else frame(results)
    grouped = table.groupby("method", sort=False)
    stats = grouped.agg(final_mean=("final_accuracy", "mean"), final_std=("final_accuracy", "std"),
                        avg_mean=("average_incremental_accuracy", "mean"),
                        avg_std=("average_incremental_accuracy", "std"), seconds_mean=("seconds_total", "mean"),
                        seeds=("seed", list)).fillna({"final_std": 0.0, "avg_std": 0.0})
    return [{"method": method, "seeds": [int(s) for s in r.seeds], "final_mean": float(r.final_mean),
             "final_std": float(r.final_std), "avg_mean": float(r.avg_mean), "avg_std": float(r.avg_std),
             "seconds_mean": float(r.seconds_mean)} for method, r in stats.iterrows()]


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
    from .runtable import collect
    results = sweep(dataset, methods, seeds, out, overrides, force, jobs)
    rows = summary_rows(collect([r.config["out"] for r in results]))  # this sweep's run folders, in order
    return markdown_table(rows), write_tables(rows, out)
