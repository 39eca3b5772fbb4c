"""Finetune: the lower bound."""

from __future__ import annotations

from .base import Method, register


@register
class Finetune(Method):
    """Lower bound: plain CE on each new task with a growing head."""

    name, label, color, rank = "finetune", "Finetune", "#BBBBBB", 0
    family, citation = "bound", "the lower bound"
    faithful = "cross-entropy on each new task with a growing head, as the ABD repository runs it"
    preset_source = "abd"
