"""The results table, one for the whole lab: ``bench-accuracy``, ``reproduce.ipynb`` and the
README's tables are this module's rows and writers.

:func:`summary_rows` groups runs (a :func:`rdfcil.collect` table or Results) by split and
method: final and average incremental accuracy, mean and sample std over the runs (``None`` for a
single run), which repeat over class orders or seeds (the row's ``over``), the mean wall time, beside the published numbers where they exist. The writers
render the rows as Markdown, LaTeX (booktabs), CSV and JSON; :func:`write_tables` writes each
file atomically.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .io import atomic_write_text, json_text


# --------------------------------------------------------------------------- methods and splits

def method_label(method: str) -> str:
    """The name a method has in tables and legends (``R-DFCIL``), from its registration."""
    from .methods import METHODS
    return METHODS[method].label if method in METHODS else str(method)


def method_rank(method: str) -> int:
    """A method's place in tables and plots (lower bounds first, the upper bound last)."""
    from .methods import METHODS
    return METHODS[method].rank if method in METHODS else 99


# The families of the methods' ``family`` attribute, in the order of figures and legends.
FAMILIES = ("bound", "inversion", "statistics", "analytic", "drift")


def method_family(method: str) -> str:
    """A method's family, its class attribute ``family`` (one of :data:`FAMILIES`); ``other`` for a
    name that is not registered or has no family."""
    from .methods import METHODS
    return getattr(METHODS.get(method), "family", "") or "other"


def split_label(num_tasks: int, first_task_classes: int | None, num_classes: int) -> str:
    """``5 × 2`` for an equal split, ``50 + 5 × 10`` for a base task and equal steps."""
    if not first_task_classes or first_task_classes * num_tasks == num_classes:
        return f"{num_tasks} × {num_classes // num_tasks}"
    steps = num_tasks - 1
    return f"{first_task_classes} + {steps} × {(num_classes - first_task_classes) // max(steps, 1)}"


# --------------------------------------------------------------------------- the rows

def summary_rows(results, published=None) -> list[dict]:
    """One row per (split, method, classifier), splits in order, methods by rank: final and average
    incremental accuracy, mean and sample std over the runs (std None for one run; ``over``: what
    the runs repeat over, class orders or seeds; ``class_orders`` and ``seeds`` list them), mean
    wall time per run, and ``published(dataset, method, num_tasks, first_task_classes)``'s numbers
    (with ``classifier=`` for a classifier other than the linear head; ``paper_protocol`` says how
    a published setting differs from the run's, None where it does not).
    ``results``: a table from :func:`rdfcil.collect` (one row per run) or a list of Results."""
    from .runtable import frame
    table = results if hasattr(results, "groupby") else frame(results)
    table = table.assign(_order=table["method"].map(method_rank), _first=table["base_classes"].astype(object),
                         _class_order=(table["class_order"] if "class_order" in table else [0] * len(table)))
    if "classifier" not in table:
        table = table.assign(classifier="linear head")
    keys = ["num_tasks", "_first", "num_classes", "_order", "method", "classifier"]
    stats = table.groupby(keys, sort=True, dropna=False).agg(
        dataset=("dataset", "first"), seeds=("seed", list), runs=("seed", "size"), orders=("_class_order", list),
        final_mean=("final_accuracy", "mean"), final_std=("final_accuracy", "std"),
        avg_mean=("average_incremental_accuracy", "mean"), avg_std=("average_incremental_accuracy", "std"),
        seconds_mean=("seconds_total", "mean"))
    rows = []
    for (tasks, first, classes, _, method, classifier), r in stats.iterrows():
        tasks, classes = int(tasks), int(classes)
        first = None if first is None or (isinstance(first, float) and math.isnan(first)) else int(first)
        by = {"classifier": classifier} if classifier != "linear head" else {}  # FeTrIL's LinearSVC or fc head
        paper = (published(r.dataset, method, tasks, first, **by) if published else None) or {}
        single = r.runs < 2
        rows.append({
            "dataset": r.dataset, "method": method, "num_tasks": tasks, "first_task_classes": first,
            "split": split_label(tasks, first, classes), "seeds": [int(s) for s in r.seeds],
            "class_orders": [o if isinstance(o, int) else list(o) for o in r.orders],
            "over": repeats_over(r.seeds, r.orders),
            "final_mean": float(r.final_mean), "final_std": None if single else float(r.final_std),
            "avg_mean": float(r.avg_mean), "avg_std": None if single else float(r.avg_std),
            "paper_last": paper.get("last"), "paper_last_std": paper.get("last_std"),
            "paper_avg": paper.get("avg"),
            "seconds_mean": None if math.isnan(r.seconds_mean) else float(r.seconds_mean),
            "classifier": classifier, "paper_protocol": paper.get("protocol"),
        })
    return rows


def family_rows(results, published=None) -> list[dict]:
    """The points of the families figure (``viz.families_vs_tasks``): :func:`summary_rows` with each
    row's ``family`` (:func:`method_family`), for the runs of one dataset and one kind of split (all
    equal splits, or all the same first task), so that the number of tasks is the only thing that
    changes along a line. Stops with a one-line :class:`RdfcilError` on runs of several datasets or
    kinds of split, or on none."""
    from .errors import RdfcilError
    rows = summary_rows(results, published)
    if not rows:
        raise RdfcilError("no finished runs to compare")
    datasets = sorted({r["dataset"] for r in rows})
    if len(datasets) > 1:
        raise RdfcilError(f"the runs are of several datasets ({', '.join(datasets)}); pass the runs of one")
    kinds = sorted({"equal tasks" if r["split"].count("+") == 0 else f"{r['first_task_classes']} base classes"
                    for r in rows})
    if len(kinds) > 1:
        raise RdfcilError(f"the runs mix kinds of split ({', '.join(kinds)}); pass the runs of one protocol")
    return [dict(r, family=method_family(r["method"]), split_kind=kinds[0]) for r in rows]


def repeats_over(seeds, orders) -> str:
    """What the runs of a row repeat over: ``class orders``, ``seeds``, ``class orders and
    seeds``, or ``one run`` (the published CIFAR-100 and Tiny-ImageNet repeats are class orders)."""
    if len(seeds) < 2:
        return "one run"
    n_orders, n_seeds = len({str(o) for o in orders}), len(set(seeds))
    if n_orders > 1 and n_seeds > 1:
        return "class orders and seeds"
    return "class orders" if n_orders > 1 else "seeds" if n_seeds > 1 else "runs of one setting"


def _over(rows) -> str:
    """What the rows' runs repeat over, for a caption."""
    kinds = {r.get("over") for r in rows} - {"one run", None}
    return kinds.pop() if len(kinds) == 1 else "the runs (see the Runs column)"


def _runs(r) -> str:
    n = len(r["seeds"])
    over = r.get("over", "seeds")
    return str(n) if n < 2 else f"{n} {over}" if over in ("class orders", "seeds") else f"{n} ({over})"


# --------------------------------------------------------------------------- the writers

def markdown_rows(rows: Sequence[Mapping]) -> str:
    """Any list of dicts (same keys) as a Markdown table, e.g. ``analysis.task_table``."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(map(str, keys)) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def _pm(mean, std, pm: str = " ± ", missing: str = "–") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return missing
    return f"{mean:.2f}" if std is None else f"{mean:.2f}{pm}{std:.2f}"


def _protocols(rows: Sequence[Mapping]) -> list[str]:
    """The published settings that differ from the runs' (``paper_protocol``), in order."""
    return list(dict.fromkeys(r["paper_protocol"] for r in rows if r.get("paper_protocol")))


def _paper(r, value, std, pm, missing, notes: list[str]) -> str:
    """A published cell; a number from another protocol carries the number of its note."""
    cell = _pm(value, std, pm, missing)
    if cell != missing and r.get("paper_protocol"):
        cell += f" [{notes.index(r['paper_protocol']) + 1}]"
    return cell


def _columns(published: bool, seconds: bool, notes: list[str] = ()) -> list[tuple[str, str, callable]]:
    """(Markdown header, LaTeX header, cell(row, pm, missing)) of each column; ``notes``: the
    protocols of published numbers from another setting (:func:`_protocols`)."""
    columns = [("method", "Method", lambda r, pm, missing: method_label(r["method"])),
               ("split", "Split", lambda r, pm, missing: r["split"]),
               ("runs", "Runs", lambda r, pm, missing: _runs(r)),
               ("final (ours)", "Final (ours)", lambda r, pm, missing: _pm(r["final_mean"], r["final_std"], pm))]
    if published:
        columns.append(("final (published)", "Final (publ.)",
                        lambda r, pm, missing: _paper(r, r["paper_last"], r["paper_last_std"], pm, missing, notes)))
    columns.append(("avg. incr. (ours)", "Avg (ours)", lambda r, pm, missing: _pm(r["avg_mean"], r["avg_std"], pm)))
    if published:
        columns.append(("avg. incr. (published)", "Avg (publ.)",
                        lambda r, pm, missing: _paper(r, r["paper_avg"], None, pm, missing, notes)))
    if seconds:
        columns.append(("wall time per run (s)", "Time (s)",
                        lambda r, pm, missing: missing if r["seconds_mean"] is None else f"{r['seconds_mean']:.0f}"))
    columns.append(("classifier", "Classifier", lambda r, pm, missing: r.get("classifier") or "linear head"))
    return columns


def markdown_table(rows: Sequence[dict], published: bool = True, seconds: bool = False) -> str:
    """The table in Markdown (accuracies in %, mean ± std over the runs: the ``runs`` column says
    how many and what they repeat over, class orders or seeds); ``published``: the published
    numbers beside ours, a number from another setting marked [i] and its setting noted under the
    table; ``seconds``: the mean wall time per run. The last column names the classifier that
    made the predictions."""
    notes = _protocols(rows) if published else []
    columns = _columns(published, seconds, notes)
    lines = ["| " + " | ".join(c[0] for c in columns) + " |",
             "|" + "---|" * 3 + "---:|" * (len(columns) - 4) + "---|"]
    lines += ["| " + " | ".join(c[2](r, " ± ", "–") for c in columns) + " |" for r in rows]
    lines += ([""] if notes else []) + [f"[{i + 1}] published in another setting: {n}" for i, n in enumerate(notes)]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text.replace("×", r"$\times$").replace("–", "--")


def latex_table(rows: Sequence[dict], caption: str | None = None, label: str = "tab:reproduction",
                published: bool = True, seconds: bool = False) -> str:
    """The table as a booktabs ``table`` (needs ``\\usepackage{booktabs}``), a rule between splits."""
    notes = _protocols(rows) if published else []
    columns = _columns(published, seconds, notes)
    dataset = rows[0]["dataset"] if rows else ""
    caption = caption or (f"Final and average incremental accuracy (\\%) on {_tex_escape(dataset)}, "
                          f"mean $\\pm$ std over {_over(rows)}" + (", beside the published numbers." if published else ".")
                          + "".join(f" [{i + 1}] Published in another setting: {_tex_escape(n)}."
                                    for i, n in enumerate(notes)))
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{ll" + "r" * (len(columns) - 3) + "l}", r"\toprule",
             " & ".join(c[1] for c in columns) + r" \\", r"\midrule"]
    previous = None
    for r in rows:
        if previous is not None and r["split"] != previous:
            lines.append(r"\midrule")
        previous = r["split"]
        cells = (_tex_escape(c[2](r, "\x00", "--")).replace("\x00", " $\\pm$ ") for c in columns)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}", f"\\label{{{label}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# Wall time only where asked for: the committed reproduction table depends on the numbers alone,
# not on the machine's load.
CSV_FIELDS = ["dataset", "method", "num_tasks", "first_task_classes", "split", "seeds", "class_orders", "over",
              "final_mean", "final_std", "avg_mean", "avg_std", "paper_last", "paper_last_std", "paper_avg",
              "classifier", "paper_protocol"]


def csv_table(rows: Sequence[dict], seconds: bool = False, provenance: bool = False) -> str:
    """The rows as CSV (raw numbers; empty where a value does not exist)."""
    fields = CSV_FIELDS + (["seconds_mean"] if seconds else []) + (["provenance"] if provenance else [])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else " ".join(map(str, r[k])) if k in ("seeds", "class_orders")
                             else f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in fields})
    return buffer.getvalue()


def write_tables(rows: Sequence[dict], stem: str | Path, formats: Sequence[str] = ("md", "tex", "csv"),
                 published: bool = True, seconds: bool = False, stamp: dict | None = None) -> dict[str, Path]:
    """Write ``stem.<format>`` for each of ``formats`` (md, tex, csv, json), each atomically;
    returns the paths by format. ``stamp`` (:func:`rdfcil.provenance.stamp`): the Markdown gets
    its line under the table, the LaTeX as a comment above it, the CSV and JSON rows a
    ``provenance`` field."""
    from .provenance import line
    stem = Path(stem)
    text = line(stamp) if stamp else None
    stamped = [dict(r, provenance=text) for r in rows] if text else list(rows)
    writers = {"md": lambda: markdown_table(rows, published, seconds) + (f"\n{text}\n" if text else ""),
               "tex": lambda: (f"% {text}\n" if text else "") + latex_table(rows, published=published, seconds=seconds),
               "csv": lambda: csv_table(stamped, seconds, provenance=bool(text)),
               "json": lambda: json_text(stamped) + "\n"}
    paths = {}
    for fmt in formats:
        paths[fmt] = stem.with_name(stem.name + "." + fmt)
        atomic_write_text(paths[fmt], writers[fmt]())
    return paths
