"""Which code made a number: the stamp under every results table the lab writes.

A stamp names the commit of the working tree that wrote the table (with ``+ uncommitted
changes`` when tracked files differ from it), the date, the command, and what the runs were
made with: torch version, device and CPU threads, read from the run folders' records. Runs made
at another commit than the table are named, so a table built from old run folders says so.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# What the lab writes when it regenerates its results: a change there is an output, not code.
OUTPUTS = ("figures", "README.md")


def commit() -> str:
    """``<12-digit commit>`` of the package's checkout, ``+ uncommitted changes`` when a tracked
    file other than the generated results (:data:`OUTPUTS`) differs from it; ``unknown commit``
    outside a git checkout."""
    head = _git("rev-parse", "--short=12", "HEAD")
    if not head:
        return "unknown commit"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in OUTPUTS))
    return head + (" + uncommitted changes" if dirty else "")


def command_line() -> str:
    """The command of this process as a user would type it (``python -m rdfcil ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py") and Path(argv[0]).parent.name == "rdfcil":
        argv[0] = "python -m rdfcil"
    return " ".join(argv)


def run_records(folders) -> list[dict]:
    """The ``results.json`` of each run folder that has one."""
    records = []
    for folder in folders:
        path = Path(folder) / "results.json"
        if path.is_file():
            records.append(json.loads(path.read_text()))
    return records


def _threads(record: dict):
    config = record.get("config", {})
    threads = record.get("threads") or record.get("num_threads") or config.get("threads")
    if isinstance(threads, list):  # one count per task
        return ", ".join(sorted({str(n) for n in threads})) or None
    return threads


def stamp(command: str | None = None, folders=(), threads: int | None = None, date: str | None = None) -> dict:
    """The provenance of a table built from the runs in ``folders``: ``commit``, ``date`` (UTC),
    ``command``, ``torch``, ``device``, ``threads`` and ``run_commits`` (the commits of runs
    made at another commit than this one). ``threads``: the runs' thread count where their
    records do not hold it (the caller knows how it ran them)."""
    import torch
    records = run_records(folders)
    here = commit()
    head = here.split(" ")[0]

    def values(key, default):
        found = sorted({str(v) for v in (key(r) for r in records) if v is not None})
        return ", ".join(found) if found else str(default)

    others = sorted({(r.get("git_commit") or "unknown")[:12] for r in records} - {head})
    return {
        "commit": here,
        "date": date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command or command_line(),
        "torch": values(lambda r: r.get("torch"), torch.__version__),
        "device": values(lambda r: r.get("device"), "cpu"),
        "threads": values(_threads, threads if threads is not None else torch.get_num_threads()),
        "run_commits": others,
    }


def line(p: dict) -> str:
    """The stamp as one line of text (Markdown-safe)."""
    text = (f"Made at commit {p['commit']} on {p['date']} by `{p['command']}`; torch {p['torch']}, "
            f"device {p['device']}, {p['threads']} thread(s).")
    if p.get("run_commits"):
        text += f" Runs made at commit {', '.join(p['run_commits'])}."
    return text
