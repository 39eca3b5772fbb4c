"""Progress display: a live bar where someone watches, one line where nobody does.

Three displays, chosen by :func:`display_kind` from where the code runs:

* ``widget``: a Jupyter kernel whose frontend takes input (JupyterLab, Notebook, VS Code):
  tqdm's notebook bar, redrawn in place.
* ``line``: a Jupyter kernel whose frontend does not take input (papermill, nbval, nbconvert
  execute cells with ``allow_stdin=False``): no live bar, one printed line when the bar closes.
  A saved notebook keeps that line and no widget state, and nbval, which reads a cell's
  messages only after the cell ends, is not flooded with redraws (thousands of widget updates
  overflow the kernel's message queue and nbval then times out waiting for the cell's end).
* ``text``: anywhere else (a terminal, a sweep's child process): tqdm's text bar on stderr.
"""
from __future__ import annotations

import sys
import time


def display_kind(shell=None) -> str:
    """'widget', 'line' or 'text' for the IPython ``shell`` (default: the running one, if any)."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return "text"
        shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:  # plain python, or the IPython terminal
        return "text"
    parent = kernel.get_parent() if hasattr(kernel, "get_parent") else {}
    allow_stdin = (parent or {}).get("content", {}).get("allow_stdin", getattr(kernel, "_allow_stdin", False))
    return "widget" if allow_stdin else "line"


def make_bar(total: int, description: str, unit: str = "it", kind: str | None = None, leave: bool = False):
    """A tqdm-like bar (``update``, ``reset``, ``set_description``, ``set_postfix``,
    ``set_postfix_str``, ``write``, ``close``) for the display :func:`display_kind` picks."""
    kind = kind or display_kind()
    if kind == "line":
        return LineBar(total, description, unit)
    if kind == "widget":
        from tqdm.notebook import tqdm
    else:
        from tqdm import tqdm
    return tqdm(total=total, desc=description, unit=unit, leave=leave, dynamic_ncols=True)


class LineBar:
    """Counts like a tqdm bar and draws nothing until ``close()``, which prints one line:
    ``<description>: <n>/<total> <unit> in <seconds> s[, <postfix>]``."""

    def __init__(self, total: int, description: str, unit: str = "it", out=None):
        self.total, self.desc, self.unit, self.out = total, description, unit, out
        self.n, self.postfix, self.start = 0, "", time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def reset(self, total: int | None = None) -> None:
        self.n = 0
        self.total = self.total if total is None else total

    def refresh(self) -> None:
        pass

    def set_description(self, description: str, refresh: bool = True) -> None:
        self.desc = description

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def write(self, line: str, file=None) -> None:
        """Print ``line`` on the bar's one stream (stdout by default; ``file`` is ignored), so that
        a saved notebook keeps the lines in the order they were written."""
        print(line, file=self.out or sys.stdout, flush=True)

    def close(self, line: str | None = None) -> None:
        """Print ``line``, by default the bar's state: ``<description>: <n>/<total> <unit> in <s> s``."""
        seconds = time.perf_counter() - self.start
        tail = f", {self.postfix}" if self.postfix else ""
        self.write(line or f"{self.desc}: {self.n}/{self.total} {self.unit} in {seconds:.0f} s{tail}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class RunProgress:
    """One bar for a whole run, reset for each phase: ``progress(total, description) -> bar``.
    The bar a phase gets keeps going when the phase closes it; :meth:`close` ends the run's bar,
    so a notebook run by papermill or nbval prints one line per run."""

    def __init__(self, kind: str | None = None):
        self.kind, self.bar, self.phases = kind, None, 0

    def __call__(self, total: int, description: str):
        if self.bar is None:
            self.bar = make_bar(total, description, kind=self.kind)
        else:  # the new label and no loss first: reset() redraws, with the new step count
            self.bar.set_description(description, refresh=False)
            self.bar.set_postfix_str("", refresh=False)
            self.bar.reset(total=total)
        self.phases += 1
        return PhaseBar(self.bar)

    def close(self, summary: str | None = None) -> None:
        """End the run's bar. ``summary`` (e.g. the wall time of each phase) is printed where
        the bar was and stays in the output once the bar is gone; a line bar prints it instead
        of its own line."""
        if isinstance(self.bar, LineBar):  # 'trained 12 phases in 41 s (last: task 2 (of 2) refine epoch 30/30)'
            self.bar.close(summary or f"trained {self.phases} phases in {self.bar.elapsed():.0f} s (last: {self.bar.desc})")
        elif self.bar is not None:
            self.bar.close()
            if summary:
                kind = self.kind or display_kind()
                print(summary, file=sys.stderr if kind == "text" else sys.stdout, flush=True)
        self.bar = None


class PhaseBar:
    """The run's bar as one phase sees it: ``close()`` leaves it open for the next phase."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, **kwargs) -> None:
        self.bar.set_postfix(**kwargs)

    def set_description(self, description: str) -> None:
        self.bar.set_description(description, refresh=False)

    def close(self) -> None:
        self.bar.refresh()
