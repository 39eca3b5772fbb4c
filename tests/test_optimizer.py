"""The per-phase optimiser (``Phase.optimizer``): one step of each against a hand computation."""

import math

import pytest
import torch

from rdfcil.config import resolve
from rdfcil.engine import make_optimizer
from rdfcil.methods.base import Phase

CONFIG = resolve({"dataset": "digits", "preset": "quick", "weight_decay": 0.1, "momentum": 0.9})


def one_step(name: str, lr: float, p0: float, g: float, weight_decay=None) -> float:
    p = torch.nn.Parameter(torch.tensor([p0], dtype=torch.float64))
    phase = Phase("t", 1, lr, [p], lambda x, y: {}, range(1), optimizer=name, weight_decay=weight_decay)
    opt = make_optimizer(phase, CONFIG, torch.device("cpu"))
    p.grad = torch.tensor([g], dtype=torch.float64)
    opt.step()
    return p.item()


def test_sgd_step_is_the_runs_momentum_and_weight_decay():
    assert isinstance(make_optimizer(Phase("t", 1, 0.1, [torch.nn.Parameter(torch.zeros(1))], None, range(1)),
                                     CONFIG, torch.device("cpu")), torch.optim.SGD)
    # first step: v = g + wd p = 0.5 + 0.1 * 2 = 0.7; p = 2 - 0.1 * 0.7
    assert one_step("sgd", 0.1, 2.0, 0.5) == pytest.approx(2.0 - 0.1 * 0.7, abs=1e-12)


def test_adam_step_by_hand_with_the_phases_weight_decay():
    # g' = g + wd p = 0.5 + 0.01 * 2 = 0.52; m = 0.1 g', v = 0.001 g'^2; bias-corrected m/sqrt(v) = g'/|g'| = 1
    g = 0.5 + 0.01 * 2.0
    m_hat, v_hat = (0.1 * g) / (1 - 0.9), (0.001 * g * g) / (1 - 0.999)
    expected = 2.0 - 1e-3 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert one_step("adam", 1e-3, 2.0, 0.5, weight_decay=0.01) == pytest.approx(expected, abs=1e-12)


def test_an_unknown_optimiser_is_named():
    with pytest.raises(ValueError, match="optimizer 'rmsprop' is not one of sgd, adam"):
        one_step("rmsprop", 0.1, 1.0, 1.0)
