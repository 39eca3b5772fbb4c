"""Read a run folder back: config, results, histories, and the model, old model and generator
after any finished task. The notebooks look at runs only through this module and ``viz``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from .config import Config, read_yaml, validate
from .data import Benchmark, load_benchmark
from .engine import Results, pick_device
from .errors import RdfcilError
from .inversion import Generator, frozen_copy, sample
from .io import load_checkpoint, read_json
from .losses import angle_relations, distance_relations
from .nets import IncrementalNet, build_model


@dataclass
class RunView:
    """A finished (or partly finished) run folder."""
    folder: Path
    device: str = "cpu"
    _checkpoints: dict = field(default_factory=dict, repr=False)

    @cached_property
    def config(self) -> Config:
        values = read_yaml(self.folder / "config.yaml")
        config = Config(**{k: v for k, v in values.items() if k in Config.__dataclass_fields__})
        validate(config)
        return config

    @cached_property
    def results(self) -> Results:
        return Results.load(self.folder)

    @cached_property
    def history(self) -> dict:
        return read_json(self.folder / "history.json")

    @cached_property
    def bench(self) -> Benchmark:
        return load_benchmark(self.config, pick_device(self.device))

    @property
    def num_finished(self) -> int:
        return len(self.results.accuracy_per_task)

    def checkpoint(self, task: int) -> dict:
        if not 0 <= task < self.num_finished:
            raise RdfcilError(f"task {task} has not finished in '{self.folder}' (finished: {self.num_finished})")
        if task not in self._checkpoints:
            self._checkpoints[task] = load_checkpoint(self.folder / f"task_{task}.pt", pick_device(self.device))
        return self._checkpoints[task]

    def model(self, task: int) -> IncrementalNet:
        """The model after ``task`` (eval mode)."""
        spec = self.bench.spec
        model = build_model(self.config.backbone, spec.channels, spec.image_size)
        for t in range(task + 1):
            model.head.add_task(len(self.bench.tasks[t]))
        model.load_state_dict(self.checkpoint(task)["model"])
        return model.to(pick_device(self.device)).eval()

    def generator(self, task: int) -> Generator | None:
        """The generator inverted from the model after ``task`` (None for methods without one)."""
        state = self.checkpoint(task)["method"].get("generator")
        if state is None:
            return None
        c, spec = self.config, self.bench.spec
        g = Generator(spec.image_size, spec.channels, c.z_dim, c.generator_width)
        g.load_state_dict(state)
        return g.to(pick_device(self.device)).eval()

    def synthetic(self, task: int, n: int, seed: int = 0):
        """``n`` synthetic images of the generator after ``task`` with the old model's labels."""
        generator = self.generator(task)
        if generator is None:
            raise RdfcilError(f"method '{self.config.method}' trains no generator")
        torch.manual_seed(seed)
        images, labels, _ = sample(generator, frozen_copy(self.model(task)), n)
        return images, labels

    def real(self, classes: range, n: int | None = None, split: str = "test"):
        """Real (normalised) images of ``classes`` with remapped labels, the first ``n``."""
        images = self.bench.test if split == "test" else self.bench.train
        xs, ys = zip(*images.batches(classes, 512))
        x, y = torch.cat(xs), torch.cat(ys)
        return (x[:n], y[:n]) if n else (x, y)

    def confusion(self, task: int):
        return self.checkpoint(task)["confusion"].cpu().numpy()


def load_run(folder: str | Path, device: str = "cpu") -> RunView:
    folder = Path(folder)
    if not (folder / "results.json").is_file():
        raise RdfcilError(f"'{folder}' is not a run folder (no results.json); run python -m rdfcil run first")
    return RunView(folder, device)


@torch.no_grad()
def features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Pooled backbone features of ``images``."""
    model.eval()
    return torch.cat([model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def relation_matrices(feats: torch.Tensor, anchor: int = 0) -> dict[str, torch.Tensor]:
    """N x N views of a batch's relations: normalised pairwise distances, and the angles
    ``psi[anchor, j, k]`` seen from one anchor (a slice of the N^3 angle tensor)."""
    return {"distance": distance_relations(feats).cpu(), "angle": angle_relations(feats)[anchor].cpu()}
