"""Model inversion (docs/methods/inversion.md, "Model inversion"): a generator trained so that a frozen old model sees
its images as real data, and the replay that draws synthetic batches from it.

Losses on a generated batch ``x = G(z)`` with old-model logits ``o`` and ``y = argmax o``:

* content        ``CE(o / tau, y)``, tau = 1000;
* class balance  ``1 + sum_c p_c log p_c / log K``, ``p`` the batch-mean softmax (0 uniform, 1 one class);
* smoothness     ``alpha_pr * MSE(x, blur(x))``;
* feature stats  ``alpha_rf * mean_l KL(N(rmu_l, rvar_l) || N(mu_l, var_l))`` over the old model's
  BatchNorm layers, ``KL = 0.5 mean_c [log(var/rvar) + (rvar + (rmu - mu)^2)/var - 1]``.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn import functional as F

from .precision import autocast_for, fp32


class Generator(nn.Module):
    """The published generator, for any channel count and 8/28/32/64/224-pixel images.

    ``z (z_dim) -> Linear -> width x s0 x s0 -> BN -> [upsample x2 -> Conv3x3 -> BN(eps=0.8) ->
    LeakyReLU(0.2)] x n_up -> Conv3x3(-> C) -> Tanh -> BN(C, affine=False)``, with
    ``n_up = 2`` (s0 = s/4) up to 32 pixels, 3 for 64 (s0 = s/8), 5 for 224 (s0 = 7, width 64).
    Up to 64 pixels the last stage halves the width (128 -> 64); the 224-pixel generator keeps
    64 channels in every stage, as published (cl-lite's ``generator/imagenet.py``). ``eps=0.8`` in the stage
    BatchNorms is a quirk of the published generator (a much larger epsilon than PyTorch's
    1e-5, which damps the normalisation); it is kept on purpose.
    """

    def __init__(self, image_size: int, channels: int, z_dim: int = 1000, width: int = 128, device=None):
        super().__init__()
        with torch.device(device or "cpu"):  # parameters and buffers are created on the device
            self._build(image_size, channels, z_dim, width)

    def _build(self, image_size: int, channels: int, z_dim: int, width: int) -> None:
        n_up = 2 if image_size <= 32 else 3 if image_size <= 64 else 5
        if image_size >= 224:
            width = min(width, 64)
        start = image_size // 2 ** n_up
        if start * 2 ** n_up != image_size:
            raise ValueError(f"image size {image_size} is not {start} x 2^{n_up}")
        self.z_dim, self.width, self.start = z_dim, width, start
        self.project = nn.Linear(z_dim, width * start * start)
        self.bn0 = nn.BatchNorm2d(width)
        stages, cin = [], width
        for i in range(n_up):
            cout = width // 2 if i == n_up - 1 and image_size < 224 else width
            stages += [nn.Upsample(scale_factor=2), nn.Conv2d(cin, cout, 3, 1, 1),
                       nn.BatchNorm2d(cout, eps=0.8), nn.LeakyReLU(0.2)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.to_image = nn.Sequential(nn.Conv2d(cin, channels, 3, 1, 1), nn.Tanh(),
                                      nn.BatchNorm2d(channels, affine=False))

    def forward(self, z):
        x = self.project(z).view(len(z), self.width, self.start, self.start)
        return self.to_image(self.stages(self.bn0(x)))

    def sample_z(self, n: int, device=None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=device or self.project.weight.device)


def build_generator(config, spec, device) -> Generator:
    """The run's generator for ``spec``'s images (``z_dim``, ``generator_width`` from the config),
    created on ``device``."""
    return Generator(spec.image_size, spec.channels, config.z_dim, config.generator_width, device=device)


# --------------------------------------------------------------------------- losses

@fp32
def bn_kl(mu: torch.Tensor, var: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """``0.5 mean_c [log(var/rvar) + (rvar + (rmu - mu)^2)/var - 1]`` = KL(N(rmu, rvar) || N(mu, var))."""
    var = var.float().clamp_min(1e-8)
    rvar = running_var.float().clamp_min(1e-8)
    return 0.5 * (torch.log(var / rvar) + (rvar + (running_mean.float() - mu.float()) ** 2) / var - 1).mean()


class BatchNormStatistics(contextlib.AbstractContextManager):
    """Forward pre-hooks on every BatchNorm2d of ``model`` that record the KL between the batch
    statistics of the layer's input and its running statistics. Installed on entry, removed on
    exit: ``with BatchNormStatistics(old) as stats: old(x); loss = stats.loss()``."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.handles = []
        self.kls: list[torch.Tensor] = []
        self.batch_stats: list[tuple] = []
        self.keep_stats = False

    def _hook(self, module, inputs):
        x = inputs[0].float()
        mu = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.kls.append(bn_kl(mu, var, module.running_mean, module.running_var))
        if self.keep_stats:
            self.batch_stats.append((mu.detach(), var.detach()))

    def __enter__(self):
        for module in self.model.modules():
            if isinstance(module, nn.BatchNorm2d):
                self.handles.append(module.register_forward_pre_hook(self._hook))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        return False

    def loss(self) -> torch.Tensor:
        """``mean_l r_l`` of the last forward pass; clears the record."""
        value = torch.stack(self.kls).mean()
        self.kls.clear()
        return value


def seen_only(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``logits`` in fp32, those of classes outside the bool ``mask`` (C,) at ``-inf`` (no
    probability, never the argmax); all of them when ``mask`` is None."""
    return logits.float() if mask is None else logits.float().masked_fill(~mask, float("-inf"))


@fp32
def content_loss(logits: torch.Tensor, temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(o / tau, argmax o)`` over the classes of ``mask`` (all when None)."""
    logits = seen_only(logits, mask)
    return F.cross_entropy(logits / temperature, logits.argmax(dim=1))


@fp32
def class_balance_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 + sum_c p_c log p_c / log K`` with ``p`` the batch-mean softmax over the K classes of
    ``mask`` (all when None): 0 when the batch covers the K classes uniformly, 1 when it is all
    one class, 0 for K < 2."""
    p = F.softmax(seen_only(logits, mask), dim=1).mean(dim=0)
    entropy = (p * torch.log(p.clamp_min(1e-12))).sum()
    if mask is None:
        k = logits.shape[1]
        return logits.new_zeros(()) if k < 2 else 1.0 + entropy / math.log(k)
    k = mask.sum()  # a device tensor: the same graph for any number of seen classes
    return torch.where(k >= 2, 1.0 + entropy / torch.log(k.clamp_min(2).float()), torch.zeros_like(entropy))


def published_blur_kernel(channels: int, device=None) -> torch.Tensor:
    """The published 5x5 'sigma 1' kernel: ``exp(-((i - 2) / (2 sigma))^2)`` per axis, outer
    product, normalised to sum 1 (a Gaussian of standard deviation sqrt(2)); depthwise. Made on
    ``device`` (no host-to-device copy in a step)."""
    axis = torch.exp(-((torch.arange(5, dtype=torch.float32, device=device) - 2) / 2.0) ** 2)
    kernel = torch.outer(axis, axis)
    kernel = kernel / kernel.sum()
    return kernel.expand(channels, 1, 5, 5).contiguous()


@fp32
def smoothness_loss(images: torch.Tensor) -> torch.Tensor:
    """``MSE(x, blur(x))``, blur = the published kernel on the image reflect-padded by 2."""
    channels = images.shape[1]
    kernel = published_blur_kernel(channels, images.device)
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    return F.mse_loss(images.float(), F.conv2d(padded, kernel, groups=channels))


def inversion_losses(images, logits, stats: BatchNormStatistics, weights: dict, mask: torch.Tensor | None = None) -> dict:
    """The four weighted inversion terms of one step (the same page); ``mask``: the old model's
    seen classes when ``logits`` are a padded head's (:func:`old_logits`)."""
    return {
        "content": content_loss(logits, weights["content_temperature"], mask),
        "balance": weights["alpha_cb"] * class_balance_loss(logits, mask),
        "smoothness": weights["alpha_pr"] * smoothness_loss(images),
        "bn_stats": weights["alpha_rf"] * stats.loss(),
    }


# --------------------------------------------------------------------------- training and sampling

def old_logits(old_model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, mask)`` of ``old_model`` on ``x``: a model with a padded head
    (``nets.IncrementalNet``) gives the logits of every class it can hold and its bool mask of
    seen classes, the same shapes in every task; any other model its logits and None."""
    head = getattr(old_model, "head", None)
    if hasattr(old_model, "padded") and hasattr(head, "seen"):
        return old_model.padded(x), head.seen
    return old_model(x), None


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter frozen: the old model ``M_old``."""
    import copy
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


def refreeze(old: nn.Module | None, model: nn.Module) -> nn.Module:
    """``model``'s frozen copy (:func:`frozen_copy`), written into ``old`` in place when ``old``
    has the same parameters and buffers (a padded head: every task): the old model's tensors
    then keep their addresses from task to task, which compiled steps and CUDA graphs rely on."""
    if old is None or type(old) is not type(model):
        return frozen_copy(model)
    pairs = list(zip(old.parameters(), model.parameters())) + list(zip(old.buffers(), model.buffers()))
    if len(pairs) != len(list(model.parameters())) + len(list(model.buffers())) or \
            any(a.shape != b.shape or a.dtype != b.dtype for a, b in pairs):
        return frozen_copy(model)
    with torch.no_grad():
        for kept, current in pairs:
            kept.copy_(current)
    if hasattr(model, "head") and hasattr(model.head, "sizes"):
        old.head.sizes = list(model.head.sizes)
    return old.eval()


def loss_weights(config) -> dict:
    """The weights of :func:`inversion_losses` from a config: ``content_temperature`` (tau),
    ``alpha_cb``, ``alpha_pr``, ``alpha_rf``."""
    return dict(content_temperature=config.content_temperature, alpha_cb=config.alpha_cb,
                alpha_pr=config.alpha_pr, alpha_rf=config.alpha_rf)


def generator_step(generator: Generator, old_model: nn.Module, stats: "BatchNormStatistics",
                   optimizer: torch.optim.Optimizer, batch_size: int, weights: dict, precision: str = "fp32",
                   graphs: bool = False):
    """One inversion step as a function ``step() -> terms``: ``x = G(z)``, ``z ~ N(0, I)`` of
    ``batch_size``; the four terms of :func:`inversion_losses` on ``M_old(x)`` and the BatchNorm
    statistics ``stats`` gathered (under ``precision``'s autocast; in :func:`graphs.step_function`
    with ``graphs``); ``L = sum(terms)`` backward, ``optimizer.step()``. Returns the terms and
    ``total`` as device tensors."""
    from .graphs import step_function
    device = next(generator.parameters()).device
    autocast = autocast_for(device, precision)

    def step_loss(z: torch.Tensor) -> dict:
        images = generator(z)
        logits, mask = old_logits(old_model, images)
        return inversion_losses(images, logits, stats, weights, mask)
    step_loss = step_function(step_loss, device, graphs)

    def step() -> dict:
        z = generator.sample_z(batch_size, device)
        with autocast:
            terms = step_loss(z)
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return {**terms, "total": total}
    return step


def train_generator(generator: Generator, old_model: nn.Module, steps: int, batch_size: int,
                    lr: float, weights: dict, progress=None, check=None,
                    precision: str = "fp32", optimizer: torch.optim.Optimizer | None = None,
                    graphs: bool = False, sync_interval: int = 50) -> dict[str, list[float]]:
    """Train ``generator`` for ``steps`` Adam steps against the frozen ``old_model``.

    ``optimizer``: an Adam over the generator's parameters to go on with (the ABD repository
    carries one generator and its optimiser from task to task); None makes a fresh one.
    ``graphs``: the step's forward (generator, old model with its BatchNorm hooks, the four
    terms) and backward in :func:`graphs.step_function`, Adam fused, on CUDA. The terms stay on
    the device and are read back every ``sync_interval`` steps (:class:`StepRecord`).

    Returns the history of each loss term (weighted) and of their total. ``progress`` is an
    optional tqdm-like bar; ``check(step, terms)`` (floats) may raise on a non-finite loss.
    """
    from .graphs import fused_optimizer
    from .steprecord import StepRecord
    device = next(generator.parameters()).device
    optimizer = optimizer or torch.optim.Adam(generator.parameters(), lr=lr, **fused_optimizer(device, graphs))
    history: dict[str, list[float]] = {k: [] for k in ("content", "balance", "smoothness", "bn_stats", "total")}
    record = StepRecord(sync_interval, check)
    generator.train()
    old_model.eval()

    def take(flushed) -> None:
        for _, terms in flushed:
            for name, value in terms.items():
                history[name].append(value)
        if flushed and progress is not None:
            progress.set_postfix(loss=f"{history['total'][-1]:.3f}", bn=f"{history['bn_stats'][-1]:.3f}")

    with BatchNormStatistics(old_model) as stats:
        inversion_step = generator_step(generator, old_model, stats, optimizer, batch_size, weights, precision, graphs)
        for step in range(steps):
            take(record.add(step, inversion_step()))
            if progress is not None:
                progress.update(1)
        take(record.flush())
    optimizer.zero_grad(set_to_none=True)  # no gradient left in a compiled step's memory pool
    generator.eval()
    return history


@torch.no_grad()
def sample(generator: Generator, old_model: nn.Module, n: int, batch_size: int = 256, padded: bool = False):
    """``n`` synthetic images from ``G`` in eval mode, their old-model logits and argmax labels;
    with ``padded`` the logits of every class of the old model's padded head (:func:`old_logits`;
    0 for the classes it had not seen), the labels among its seen classes."""
    generator.eval()
    device = next(generator.parameters()).device
    images, logits, mask = [], [], None
    for start in range(0, n, batch_size):
        x = generator(generator.sample_z(min(batch_size, n - start), device))
        images.append(x)
        z, mask = old_logits(old_model, x) if padded else (old_model(x), None)
        logits.append(z.float())
    images, logits = torch.cat(images), torch.cat(logits)
    return images, seen_only(logits, mask).argmax(dim=1), logits


def class_coverage(labels: torch.Tensor, num_classes: int) -> list[int]:
    """How many synthetic samples carry each pseudo-label (a vanished class shows as 0)."""
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


class SyntheticReplay:
    """Synthetic batches ``(x_s, y_s, old_logits)`` for incremental training.

    ``pool_size = 0`` draws every batch from ``G`` (the paper); ``pool_size = n`` makes ``n``
    images once and replays random batches from them (a CPU budget: the quick presets).
    ``padded``: the old logits of every class of the old model's padded head (:func:`sample`)."""

    def __init__(self, generator: Generator, old_model: nn.Module, batch_size: int, pool_size: int = 0,
                 padded: bool = False):
        self.generator, self.old_model = generator, old_model
        self.batch_size, self.pool_size, self.padded = batch_size, pool_size, padded
        self.pool = sample(generator, old_model, pool_size, padded=padded) if pool_size else None
        self.shard = lambda tensor: tensor  # set by the engine under torchrun: this process's share

    def batch(self):
        if self.pool is None:
            drawn = sample(self.generator, self.old_model, self.batch_size, self.batch_size, self.padded)
        else:
            images, labels, logits = self.pool
            pick = torch.randint(0, len(labels), (self.batch_size,), device=labels.device)
            drawn = images[pick], labels[pick], logits[pick]
        return tuple(self.shard(t) for t in drawn)
