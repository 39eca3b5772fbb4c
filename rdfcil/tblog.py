"""TensorBoard logging of a run (``logger: tensorboard``), written to ``<run>/tb/``.

The engine talks to a logger through four calls: ``scalars(values, step)``, ``images(tag,
grid, step)``, ``histogram(tag, values, step)`` and ``flush()``. :class:`NullLogger` does
nothing (``logger: none``, processes other than rank 0 under torchrun, or tensorboard not
installed), so the engine never branches on it. The logger never touches a tensor the run
computes: it receives floats the engine already took for its history, at ``log_interval``
steps, and images drawn with their own random stream (:func:`synthetic_grid`), so a run logs
the same numbers with the logger on or off.

Tags (see the README):

* ``train/<phase>/<term>`` and ``train/<phase>/lr``: every loss term of a phase and the
  learning rate, every ``log_interval`` steps (x axis: training steps since the run began);
* ``inversion/<term>``: the generator's loss terms, every ``log_interval`` inversion steps
  (x axis: ``task * inversion_steps + step``);
* ``accuracy/A_t``, ``accuracy/average_incremental``, ``accuracy/old``, ``accuracy/new``,
  ``accuracy/task_<j>`` (accuracy on the classes of task ``j``) and ``forgetting/mean``
  after each task (x axis: the task index);
* ``synthetic/classes_covered``, ``synthetic/least_class_share`` and the histogram
  ``synthetic/labels`` (class coverage of the synthetic labels), and the image grid
  ``synthetic/images`` (rows of classes), after each inversion (x axis: the task index);
* ``wall_seconds/<phase>`` per task, and the resolved config as text (``config``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

LOGGERS = ("tensorboard", "none")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


class NullLogger:
    """Logs nothing: ``logger: none``, ranks other than 0, tensorboard not installed."""

    enabled = False

    def scalars(self, values: dict, step: int) -> None:
        pass

    def images(self, tag: str, grid: torch.Tensor, step: int) -> None:
        pass

    def histogram(self, tag: str, values, step: int) -> None:
        pass

    def text(self, tag: str, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    """A ``SummaryWriter`` on ``folder``; flushed every ``flush_secs`` by its own thread and
    by the engine after each task, so a killed run keeps what it logged."""

    enabled = True

    def __init__(self, folder: str | Path, flush_secs: int = 30):
        from torch.utils.tensorboard import SummaryWriter
        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder), flush_secs=flush_secs)

    def scalars(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def images(self, tag: str, grid: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, grid, step)

    def histogram(self, tag: str, values, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_logger(kind: str, folder: str | Path, enabled: bool = True) -> NullLogger:
    """The logger of a run: TensorBoard under ``<folder>/tb`` or a :class:`NullLogger`."""
    if kind == "none" or not enabled:
        return NullLogger()
    if not tensorboard_available():
        warnings.warn("logger 'tensorboard': the tensorboard package is not installed, nothing is logged "
                      "(pip install tensorboard, or set logger: none)", stacklevel=2)
        return NullLogger()
    return TensorBoardLogger(Path(folder) / "tb")


def every(history: dict[str, list[float]], interval: int, offset: int = 0, prefix: str = ""):
    """``(step, {prefix + term: value})`` for every ``interval``-th step of a per-step history
    (``{term: [value per step]}``), the last step included."""
    length = max((len(v) for v in history.values()), default=0)
    steps = list(range(0, length, max(interval, 1)))
    if length and steps[-1] != length - 1:
        steps.append(length - 1)
    for s in steps:
        yield offset + s, {prefix + name: values[s] for name, values in history.items() if s < len(values)}


def forked_rng(device: torch.device):
    """``torch.random.fork_rng`` of the CPU and, on CUDA, of ``device``'s generator."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@torch.no_grad()
def synthetic_grid(generator, old_model, num_classes: int, denormalize, per_class: int = 8,
                   max_classes: int = 20, seed: int = 0) -> torch.Tensor:
    """A grid (C, H, W) in [0, 1] of synthetic images, one row per pseudo-label (the first
    ``max_classes`` classes), drawn in a forked random state: the run's streams are untouched."""
    from torchvision.utils import make_grid
    from .inversion import sample
    with forked_rng(next(generator.parameters()).device):
        torch.manual_seed(seed)
        images, labels, _ = sample(generator, old_model, per_class * min(num_classes, max_classes) * 4)
    rows = []
    for c in range(min(num_classes, max_classes)):
        mine = images[labels == c][:per_class]
        pad = images.new_zeros((per_class - len(mine),) + tuple(images.shape[1:]))
        rows.append(torch.cat([denormalize(mine) if len(mine) else mine, pad]))
    grid = torch.cat(rows).float().cpu()
    if grid.shape[-1] < 32:  # small images (digits: 8 px) are hard to see unscaled
        grid = torch.nn.functional.interpolate(grid, scale_factor=32 // grid.shape[-1], mode="nearest")
    return make_grid(grid, nrow=per_class, padding=2, pad_value=1.0)
