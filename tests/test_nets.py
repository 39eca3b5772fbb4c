"""Backbones for every input size and channel count; the incremental head."""

import pytest
import torch
from torch import nn

from rdfcil.nets import BasicBlock, OptionAShortcut, build_model


@pytest.mark.parametrize("backbone, size, channels, dim", [
    ("resnet32", 32, 3, 64), ("resnet32", 8, 1, 64), ("resnet20", 28, 1, 64), ("resnet8", 64, 3, 64),
    ("resnet18", 8, 1, 512), ("resnet18", 32, 3, 512), ("resnet18", 224, 3, 512), ("resnet18", 28, 2, 512),
])
def test_backbone_shapes(backbone, size, channels, dim):
    model = build_model(backbone, channels, size).eval()
    model.head.add_task(5)
    logits, f = model(torch.randn(2, channels, size, size), features=True)
    assert f.shape == (2, dim) and logits.shape == (2, 5)


def test_resnet32_has_31_conv_layers_and_464k_parameters():
    model = build_model("resnet32", 3, 32)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 31  # stem + 15 blocks x 2
    params = sum(p.numel() for p in model.backbone.parameters())
    assert 460_000 < params < 480_000  # ~0.46 M as in He et al.


def _negative_feature_possible(model, channels, size):
    """With the zero-initialised BNs given random weights, some pooled feature is negative."""
    torch.manual_seed(0)
    for m in model.backbone.modules():
        if isinstance(m, BasicBlock):
            nn.init.normal_(m.bn2.weight)
    return (model.features(torch.randn(8, channels, size, size)) < 0).any().item()


def test_published_resnet32_is_cl_lites():
    """cl-lite's CIFAR ResNet-32: stem + 15 blocks, 31 BNs, no 1x1 convolution, parameter-free
    option-A shortcuts (subsample + zero channels), no ReLU after the additions, the last BN of
    each block at weight 0, and the head initialised from N(0, 0.001)."""
    model = build_model("resnet32", 3, 32, variant="published").eval()
    backbone = model.backbone
    blocks = [m for m in backbone.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 15 and not any(b.last_relu for b in blocks)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()) == 31
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in backbone.modules())
    shortcuts = [b.shortcut for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(shortcuts) == 2 and all(isinstance(s, OptionAShortcut) for s in shortcuts)
    assert sum(p.numel() for s in shortcuts for p in s.parameters()) == 0
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(shortcuts[0](x), torch.cat([x[..., ::2, ::2], torch.zeros(2, 16, 4, 4)], 1))
    assert all(torch.all(b.bn2.weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    model.head.add_task(100)
    assert 0.0008 < model.head.tasks[0].weight.std().item() < 0.0012
    assert _negative_feature_possible(model, 3, 32)


def test_standard_resnet32_keeps_the_former_variant():
    model = build_model("resnet32", 3, 32, variant="standard", head_init_std=None).eval()
    blocks = [m for m in model.backbone.modules() if isinstance(m, BasicBlock)]
    assert all(b.last_relu for b in blocks)
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.backbone.modules()) == 2
    assert all(torch.all(b.bn2.weight == 1) for b in blocks)
    assert not _negative_feature_possible(model, 3, 32)  # a ReLU after every addition
    model.head.add_task(100)
    bound = 1 / 64 ** 0.5  # PyTorch's default uniform(-1/sqrt(d), 1/sqrt(d))
    assert model.head.tasks[0].weight.abs().max().item() <= bound and model.head.tasks[0].weight.std().item() > 0.05


def test_published_resnet18_is_cl_lites():
    """cl-lite's ResNet-18: 3x3 stride-1 stem + max-pool, 4 stages x 2 blocks, the first block
    of each stage with a ReLU after its addition and the last without, 1x1-conv + BN shortcuts
    at the 3 downsamplings, 20 BNs, residual BNs at zero."""
    model = build_model("resnet18", 3, 224, variant="published").eval()
    backbone = model.backbone
    stem = backbone.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert any(isinstance(m, nn.MaxPool2d) for m in backbone.stem)
    blocks = [m for m in backbone.modules() if isinstance(m, BasicBlock)]
    assert [b.last_relu for b in blocks] == [True, False] * 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()) == 20
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in backbone.modules()) == 3
    assert all(torch.all(b.bn2.weight == 0) for b in blocks)
    assert _negative_feature_possible(model, 3, 32)
    standard = build_model("resnet18", 3, 224, variant="standard")
    assert type(standard.backbone).__name__ == "ResNet"  # torchvision's


def test_unknown_resnet_variant_is_refused():
    from rdfcil.errors import RdfcilError
    with pytest.raises(RdfcilError, match="resnet_variant"):
        build_model("resnet8", 1, 8, variant="preact")


def test_head_grows_keeps_old_weights_and_is_bias_free():
    model = build_model("resnet8", 1, 8)
    first = model.head.add_task(2)
    kept = first.weight.detach().clone()
    model.head.add_task(3)
    assert model.head.num_classes == 5
    assert all(layer.bias is None for layer in model.head.tasks)
    assert torch.equal(model.head.tasks[0].weight, kept)
    f = torch.randn(4, 64)
    assert torch.allclose(model.head(f), f @ model.head.weight.t())
    assert model.head.weight.shape == (5, 64)
