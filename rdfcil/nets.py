"""Backbones (CIFAR-style ResNet-8/14/20/32, ImageNet-style ResNet-18) and the incremental head.

The head is the bias-free linear rows of every class, a block per task, whose logits are
concatenated in task order (what the paper's code does with one linear per task). A new task
fills the next rows; the old ones keep their weights. The rows of classes not seen yet are
zero (:class:`IncrementalHead`), so that a phase's step has the same shapes in every task.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .errors import RdfcilError


RESNET_VARIANTS = ("published", "standard")


class OptionAShortcut(nn.Module):
    """The parameter-free shortcut of the published CIFAR ResNet ("option A"): subsample
    ``x[..., ::2, ::2]`` and append zero channels up to ``cout``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.extra = cout - cin

    def forward(self, x):
        return F.pad(x[..., ::2, ::2], (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """``conv3x3-BN-ReLU-conv3x3-BN`` plus a shortcut, then a ReLU if ``last_relu``.

    ``shortcut``: where the shape changes, ``"conv"`` is a 1x1 convolution + BN (torchvision,
    He et al. option B), ``"option_a"`` the parameter-free subsample + zero channels."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "conv", last_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.last_relu = last_relu
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = OptionAShortcut(cin, cout) if shortcut == "option_a" else \
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)
        return F.relu(out) if self.last_relu else out


def init_resnet(model: nn.Module, zero_residual: bool) -> None:
    """Kaiming-normal (fan_out) convolutions, BN weight 1 and bias 0; with ``zero_residual`` the
    last BN of every block starts at weight 0 (each block starts as the identity)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. for CIFAR: a 3x3 stem of 16 channels, three stages of ``n``
    basic blocks with 16/32/64 channels (stride 2 at stages 2 and 3), global average pooling.
    ResNet-32 is n = 5; ResNet-20 n = 3; ResNet-8 n = 1. Output: 64 features.

    ``variant="published"`` is cl-lite's port used by the R-DFCIL code (docs/methods/index.md, "The network"):
    no ReLU after the residual additions (pooled features can be negative), option-A
    shortcuts, the last BN of each block initialised to zero. ``"standard"`` is the package's
    former variant: a ReLU after every addition, 1x1-conv + BN shortcuts, default BN init."""

    def __init__(self, depth: int, channels: int, variant: str = "published"):
        super().__init__()
        if (depth - 2) % 6:
            raise RdfcilError(f"a CIFAR ResNet has depth 6n+2, got {depth}")
        published = variant == "published"
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        layers, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(n):
                layers.append(BasicBlock(cin, width, 2 if stage > 0 and block == 0 else 1,
                                         "option_a" if published else "conv", last_relu=not published))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self.feature_dim = 64
        init_resnet(self, zero_residual=published)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)


class PublishedResNet18(nn.Module):
    """cl-lite's ResNet-18 (PODNet's port of torchvision's), as the R-DFCIL code builds it for
    ImageNet-100: a 3x3 stride-1 stem of 64 channels with BN, ReLU and a 3x3 stride-2 max-pool;
    four stages of two basic blocks (64/128/256/512 channels, stride 2 from stage 2, 1x1-conv +
    BN shortcuts); the first block of each stage ends with a ReLU, the last one without
    (``last_relu=False``), no ReLU between stages; residual BNs zero-initialised. 512 features."""

    def __init__(self, channels: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for stage, width in enumerate((64, 128, 256, 512)):
            layers += [BasicBlock(cin, width, 1 if stage == 0 else 2, "conv", last_relu=True),
                       BasicBlock(width, width, 1, "conv", last_relu=False)]
            cin = width
        self.blocks = nn.Sequential(*layers)
        self.feature_dim = 512
        init_resnet(self, zero_residual=True)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)


def imagenet_resnet18(channels: int, image_size: int) -> nn.Module:
    """torchvision's ResNet-18 without its classifier (512 features): the ``standard`` variant.
    Inputs under 64 pixels get a 3x3 stride-1 stem and no max-pool, so that 8x8 and 32x32
    images keep a spatial map."""
    from torchvision.models import resnet18
    net = resnet18(weights=None)
    if image_size < 64:
        net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    net.fc = nn.Identity()
    net.feature_dim = 512
    return net


def build_backbone(name: str, channels: int, image_size: int, variant: str = "published", device=None) -> nn.Module:
    """The backbone ``name`` in ``variant``, its parameters and buffers created on ``device``
    (default: CPU)."""
    if variant not in RESNET_VARIANTS:
        raise RdfcilError(f"unknown resnet_variant '{variant}'; valid: {', '.join(RESNET_VARIANTS)}")
    depths = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32}
    if name not in depths and name != "resnet18":
        raise RdfcilError(f"unknown backbone '{name}'; valid: {', '.join(list(depths) + ['resnet18'])}")
    with torch.device(device or "cpu"):  # every tensor made in here lands on the device
        if name in depths:
            return CifarResNet(depths[name], channels, variant)
        return PublishedResNet18(channels) if variant == "published" else imagenet_resnet18(channels, image_size)


class IncrementalHead(nn.Module):
    """Bias-free linear rows, one block per task: ``logits = [W_0 f, W_1 f, ..., W_t f]``.

    With ``capacity`` (the run's class count) the rows live in one ``(capacity, feature_dim)``
    parameter, ``padded_weight``, from the start: rows of classes not seen yet are zero, and the
    bool buffer ``seen`` marks the seen ones. A task's compiled step then sees the same shapes in
    every task (:meth:`padded`). Without ``capacity`` the parameter grows with each task.
    ``forward`` gives the seen classes' logits, ``(batch, num_classes)``, either way."""

    def __init__(self, feature_dim: int, init_std: float | None = 0.001, device=None, capacity: int | None = None):
        super().__init__()
        self.feature_dim = feature_dim
        self.init_std = init_std  # normal(0, init_std) as published; None: PyTorch's default uniform
        self.capacity = capacity
        self.sizes: list[int] = []  # classes of each task, in order
        self.padded_weight = nn.Parameter(torch.zeros(capacity or 0, feature_dim, device=device))
        self.register_buffer("seen", torch.zeros(capacity or 0, dtype=torch.bool, device=device), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.padded_weight.device

    @property
    def num_classes(self) -> int:
        return sum(self.sizes)

    def add_task(self, num_classes: int) -> None:
        """Rows for ``num_classes`` new classes, drawn as a new ``nn.Linear`` on the head's device
        draws them (its init, then normal(0, init_std)): the same random numbers in the same order
        whatever the head's capacity."""
        layer = nn.Linear(self.feature_dim, num_classes, bias=False, device=self.device)
        if self.init_std is not None:
            nn.init.normal_(layer.weight, std=self.init_std)
        start, stop = self.num_classes, self.num_classes + num_classes
        if stop > len(self.padded_weight):
            if self.capacity is not None:
                raise RdfcilError(f"the head holds {self.capacity} classes; a task of {num_classes} more "
                                  f"after {start} does not fit")
            grown = torch.cat([self.padded_weight.detach(), torch.zeros_like(layer.weight)])
            self.padded_weight = nn.Parameter(grown)
            self.seen = torch.cat([self.seen, torch.zeros(num_classes, dtype=torch.bool, device=self.device)])
        with torch.no_grad():
            self.padded_weight[start:stop] = layer.weight
            self.seen[start:stop] = True
        self.sizes.append(num_classes)

    def forward(self, features):
        return F.linear(features, self.weight)

    def padded(self, features):
        """Logits of every class of the capacity, ``(batch, capacity)``: 0 for a class not seen
        yet (its row is zero and gets no gradient)."""
        return F.linear(features, self.padded_weight) * self.seen

    @property
    def weight(self) -> torch.Tensor:
        """All seen class rows, (num_classes, feature_dim)."""
        return self.padded_weight[:self.num_classes]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Load the seen rows whatever the stored capacity (rows past ``num_classes`` are zero);
        checkpoints that stored one linear per task (``tasks.<i>.weight``) load into the rows."""
        key = prefix + "padded_weight"
        per_task = sorted((k for k in state_dict if k.startswith(prefix + "tasks.")), key=lambda k: int(k.split(".")[-2]))
        if per_task and key not in state_dict:
            state_dict[key] = torch.cat([state_dict.pop(k) for k in per_task])
        stored = state_dict.get(key)
        if stored is not None and len(stored) != len(self.padded_weight):
            rows = stored[:len(self.padded_weight)]
            state_dict[key] = torch.cat([rows, rows.new_zeros(len(self.padded_weight) - len(rows), rows.shape[1])])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CosineHead(IncrementalHead):
    """The cosine classifier of PyCIL's ``CosineIncrementalNet`` (``CosineLinear``, then
    ``SplitCosineLinear``): ``logits = sigma * cos(f, w_c) = sigma <f/||f||, w_c/||w_c||>`` with one
    learnable scale ``sigma`` (initialised to 1, shared by every task's rows and kept from task to
    task) and rows drawn ``U(-1/sqrt(d), 1/sqrt(d))`` (PyTorch's ``nn.Linear`` init, which equals
    ``CosineLinear.reset_parameters``). Same interface as :class:`IncrementalHead`."""

    def __init__(self, feature_dim: int, device=None, capacity: int | None = None):
        super().__init__(feature_dim, None, device, capacity)
        self.sigma = nn.Parameter(torch.ones(1, device=device))

    def forward(self, features):
        return self.sigma * F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def padded(self, features):
        return self.sigma * F.linear(F.normalize(features, dim=1), F.normalize(self.padded_weight, dim=1)) * self.seen


HEADS = ("linear", "cosine")


class IncrementalNet(nn.Module):
    """Backbone + incremental head (``head``: ``linear``, :class:`IncrementalHead`, or ``cosine``,
    :class:`CosineHead`). ``forward(x)`` gives logits; ``forward(x, features=True)`` gives
    ``(logits, pooled features)`` (the paper's "feature mode")."""

    def __init__(self, backbone: nn.Module, head_init_std: float | None = 0.001, num_classes: int | None = None,
                 head: str = "linear"):
        super().__init__()
        self.backbone = backbone
        device = next(backbone.parameters()).device
        self.head = CosineHead(backbone.feature_dim, device, num_classes) if head == "cosine" else \
            IncrementalHead(backbone.feature_dim, head_init_std, device, num_classes)

    @property
    def device(self) -> torch.device:
        return self.head.device

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def features(self, x):
        return self.backbone(x)

    def forward(self, x, features: bool = False):
        f = self.backbone(x)
        logits = self.head(f)
        return (logits, f) if features else logits

    def padded(self, x, features: bool = False):
        """``forward`` with the logits of every class the head can hold (:meth:`IncrementalHead.padded`)."""
        f = self.backbone(x)
        logits = self.head.padded(f)
        return (logits, f) if features else logits


def build_model(backbone: str, channels: int, image_size: int, device=None, *, variant: str = "published",
                head_init_std: float | None = 0.001, num_classes: int | None = None,
                head: str = "linear") -> IncrementalNet:
    """Backbone + empty head, built on ``device`` (CPU, CUDA or ``meta``): nothing is moved after
    construction, and the head's later tasks are created where the model lives. ``variant`` and
    ``head_init_std`` default to the published code's; ``num_classes``: the head's capacity
    (:class:`IncrementalHead`; None grows it task by task); ``head``: ``linear`` or ``cosine``."""
    return IncrementalNet(build_backbone(backbone, channels, image_size, variant, device), head_init_std, num_classes,
                          head)


def model_for(config, spec, device=None) -> IncrementalNet:
    """The model a config asks for (``backbone``, ``resnet_variant``, ``head_init_std``) on ``device``,
    its head padded to the dataset's ``spec.num_classes``; the head is the one the config's method
    declares (its ``head``: ``linear``, or ``cosine`` for the drift family)."""
    from .methods import METHODS
    head = getattr(METHODS.get(config.method), "head", "linear")
    return build_model(config.backbone, spec.channels, spec.image_size, device, variant=config.resnet_variant,
                       head_init_std=config.head_init_std, num_classes=spec.num_classes, head=head)
