"""Class-incremental metrics (docs/methods/index.md, "The protocol"), all in percent.

* ``A[i][j]``: accuracy on task ``j``'s test classes after learning task ``i`` (``j <= i``).
* ``A_t``: accuracy on the test images of all classes seen after task ``t``.
* final accuracy ``A_T``; average incremental accuracy ``mean(A_1..A_T)``.
* old / new accuracy after task ``t``: on the classes of tasks ``< t`` / of task ``t``.
* forgetting of task ``j`` at the end: ``max_{i < T} A[i][j] - A[T][j]`` for ``j < T``.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> np.ndarray:
    """``C[a, b]`` = number of test images of class ``a`` predicted as ``b``."""
    flat = targets.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes).numpy()


def accuracy_on(confusion: np.ndarray, classes: range) -> float:
    """Accuracy (%) on the test images whose true class lies in ``classes``."""
    rows = confusion[classes.start:classes.stop]
    total = rows.sum()
    return float(100.0 * np.trace(confusion[classes.start:classes.stop, classes.start:classes.stop]) / total) if total else float("nan")


def task_row(confusion: np.ndarray, tasks: list[range]) -> list[float]:
    """One row of the accuracy matrix: accuracy on each task seen so far."""
    return [accuracy_on(confusion, task) for task in tasks]


def forgetting(accuracy_matrix: list[list[float]]) -> list[float]:
    """Per task ``j < T``: the best accuracy it ever had before the last task minus its last one."""
    last = len(accuracy_matrix) - 1
    return [max(accuracy_matrix[i][j] for i in range(j, last)) - accuracy_matrix[last][j]
            for j in range(last)]


def average_forgetting(accuracy_matrix: list[list[float]]) -> float:
    values = forgetting(accuracy_matrix)
    return float(np.mean(values)) if values else 0.0
