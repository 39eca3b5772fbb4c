"""Metrics against hand-computed matrices."""

import numpy as np
import pytest
import torch

from rdfcil.metrics import accuracy_on, average_forgetting, confusion_matrix, forgetting, task_row


def test_confusion_matrix_counts():
    c = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2]), 3)
    assert c.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_accuracy_per_task_from_confusion():
    # 4 classes, tasks {0,1} and {2,3}; 2 test images per class
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    preds = torch.tensor([0, 2, 1, 1, 2, 2, 3, 0])
    c = confusion_matrix(targets, preds, 4)
    assert task_row(c, [range(0, 2), range(2, 4)]) == pytest.approx([75.0, 75.0])
    assert accuracy_on(c, range(0, 4)) == pytest.approx(75.0)
    assert accuracy_on(c, range(3, 4)) == pytest.approx(50.0)


def test_forgetting_by_hand():
    a = [[90.0], [70.0, 80.0], [60.0, 85.0, 50.0]]
    # task 0: max(90, 70) - 60 = 30; task 1: max(80) - 85 = -5
    assert forgetting(a) == pytest.approx([30.0, -5.0])
    assert average_forgetting(a) == pytest.approx(12.5)
    assert forgetting([[99.0]]) == []
    assert np.isnan(accuracy_on(np.zeros((2, 2), dtype=int), range(0, 1)))
