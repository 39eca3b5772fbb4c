"""Joint: the upper bound."""

from __future__ import annotations

from ..nets import model_for
from .base import Method, Phase, Task, register


@register
class Joint(Method):
    """Upper bound: at task t, train on the real data of every class seen so far. With
    ``joint_from_scratch`` (ABD's oracle) every task starts from freshly initialised weights
    and runs the base task's epochs and learning rate; otherwise it continues from the last."""

    name, label, color, rank = "joint", "Joint", "#228833", 90
    family, citation = "bound", "the upper bound"
    faithful = "every seen class at once, retrained from scratch at each task (the ABD repository's oracle, `joint_from_scratch`)"
    preset_source = "abd"
    keys = frozenset({"joint_from_scratch"})
    trains_on_seen = True

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if self.config.joint_from_scratch and task.index > 0:
            fresh = model_for(self.config, self.spec, self.model.device)
            for size in self.model.head.sizes:
                fresh.head.add_task(size)
            self.model.load_state_dict(fresh.state_dict())

    def train_epochs(self, task: Task) -> int:
        return super().train_epochs(Task(0, task.classes, task.num_tasks) if self.config.joint_from_scratch else task)

    def lr(self, task: Task) -> float:
        return self.config.lr if self.config.joint_from_scratch else super().lr(task)

    def incremental_phases(self, task: Task) -> list[Phase]:
        return [self.phase("train", task, self.base_loss(task), classes=task.seen)]
