"""Every run in one table: ``rdfcil.collect(root) -> pandas.DataFrame`` (this module is not named
collect.py, so that importing it never replaces the function ``rdfcil.collect``).

One row per run folder under ``root`` (any depth; a run folder holds ``config.yaml`` and/or
``results.json``), built from the resolved config and the results:

* the config keys, one column each (``dataset``, ``method``, ``num_tasks``, ``seed``, ``epochs``,
  ``lr``, ...; ``first_task_classes`` as configured, None for an equal split);
* ``final_accuracy``, ``average_incremental_accuracy``, ``old_accuracy`` and ``new_accuracy``
  after the last finished task, ``forgetting`` (mean over the old tasks at the end), all in %;
* ``accuracy_per_task`` (A_t per task) and ``accuracy_matrix`` as lists, ``num_classes``
  and ``base_classes`` (classes of the first task);
* ``seconds_<phase>`` (wall time per phase summed over tasks: ``base``, ``train``, ``rrl``,
  ``refine``, ``inversion``, ``eval``), ``seconds_total``;
* ``classifier`` (what made the predictions: the linear head, NCM, FeCAM's distance, ...);
* ``tasks_finished``, ``finished`` and ``path``.

A folder whose files cannot be read is left out and named in one warning. A sweep is then a
group-by: ``df.groupby(["method", "num_tasks"]).final_accuracy.agg(["mean", "std", "count"])``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import yaml

METRICS = ("final_accuracy", "average_incremental_accuracy", "old_accuracy", "new_accuracy", "forgetting")
PHASES = ("base", "train", "rrl", "refine", "inversion", "eval")
RECORD_KEYS = ("dataset", "method", "num_tasks", "seed")


def _data(results) -> dict:
    return results.data if hasattr(results, "data") else dict(results)


def _last(values):
    values = [v for v in (values or []) if v is not None]
    return float(values[-1]) if values else math.nan


def registered_classifier(method: str | None) -> str:
    """The classifier a registered method predicts with (``Method.classifier``), for records
    written before runs recorded it."""
    from .methods import METHODS
    return METHODS[method].classifier if method in METHODS else "linear head"


def row(record: dict | None, config: dict | None = None, path: str | Path | None = None) -> dict:
    """One table row from a results record (``results.json``) and a config (``config.yaml``;
    the record's own copy when None)."""
    record = _data(record) if record is not None else {}
    config = dict(config if config is not None else record.get("config") or {})
    config.pop("out", None)
    out = {**config, **{k: record[k] for k in RECORD_KEYS if k in record and k not in config}}
    if "first_task_classes" not in out and "first_task_classes" in record:
        out["first_task_classes"] = record["first_task_classes"]
    per_task = record.get("accuracy_per_task") or []
    tasks = record.get("tasks") or []
    forgetting = record.get("forgetting") or []
    out |= {
        "tasks_finished": len(per_task),
        "finished": bool(record.get("finished", False)),
        "final_accuracy": float(record["final_accuracy"]) if record.get("final_accuracy") is not None else math.nan,
        "average_incremental_accuracy": float(record["average_incremental_accuracy"])
        if record.get("average_incremental_accuracy") is not None else math.nan,
        "old_accuracy": _last(record.get("old_accuracy")),
        "new_accuracy": _last(record.get("new_accuracy")),
        "forgetting": float(np.mean(forgetting)) if forgetting else math.nan,
        "accuracy_per_task": list(per_task),
        "accuracy_matrix": record.get("accuracy_matrix") or [],
        "num_classes": tasks[-1][1] if tasks else None,
        "base_classes": record.get("first_task_classes"),
        "classifier": record.get("classifier") or registered_classifier(out.get("method")),
    }
    seconds: dict[str, float] = {}
    for timings in record.get("wall_seconds") or []:
        for phase, value in timings.items():
            seconds[phase] = seconds.get(phase, 0.0) + float(value)
    out |= {f"seconds_{p}": seconds.get(p, math.nan) for p in dict.fromkeys(list(PHASES) + list(seconds))}
    out["seconds_total"] = float(record["wall_seconds_total"]) if "wall_seconds_total" in record else math.nan
    out["path"] = str(path) if path is not None else (record.get("config") or {}).get("out")
    return out


def frame(results) -> "pandas.DataFrame":  # noqa: F821
    """A table of results already in memory (:class:`rdfcil.runs.Results` or dicts)."""
    import pandas as pd
    return pd.DataFrame([row(r) for r in results])


def read_run(folder: str | Path) -> dict:
    """The row of one run folder; raises on a file that cannot be read."""
    from .io import read_json
    folder = Path(folder)
    config = None
    if (folder / "config.yaml").is_file():
        config = yaml.safe_load((folder / "config.yaml").read_text())
        if not isinstance(config, dict):
            raise ValueError("config.yaml does not hold a mapping")
    record = read_json(folder / "results.json") if (folder / "results.json").is_file() else None
    if record is not None and not isinstance(record, dict):
        raise ValueError("results.json does not hold a mapping")
    return row(record, config, folder)


def run_folders(root: str | Path) -> list[Path]:
    """Every folder under ``root`` (itself included) holding ``config.yaml`` or ``results.json``."""
    root = Path(root)
    found = {p.parent for name in ("config.yaml", "results.json") for p in root.rglob(name)}
    return sorted(found)


def collect(root: str | Path | list = "runs") -> "pandas.DataFrame":  # noqa: F821
    """One row per run folder under ``root`` (recursively); see the module docstring for the
    columns. ``root`` may be a list of folders: their runs in that order (e.g. the folders of
    one sweep). Unreadable folders are skipped and listed in a warning."""
    import pandas as pd
    from .errors import RdfcilError
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    rows, skipped = [], []
    for top in roots:
        if not top.exists():
            raise RdfcilError(f"cannot collect runs: '{top}' does not exist")
        for folder in run_folders(top):
            try:
                rows.append(read_run(folder))
            except (OSError, ValueError, yaml.YAMLError, RdfcilError) as err:
                reason = str(err).splitlines()[0] if str(err) else ""
                skipped.append(f"{folder} ({type(err).__name__}: {reason})")
    if skipped:
        warnings.warn(f"collect: {len(skipped)} unreadable run folder(s) left out: " + "; ".join(skipped),
                      stacklevel=2)
    table = pd.DataFrame(rows)
    if "path" in table:
        table = table[[c for c in table.columns if c != "path"] + ["path"]]
    return table
