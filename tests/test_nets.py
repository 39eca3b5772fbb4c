"""Backbones for every input size and channel count; the incremental head."""

import pytest
import torch

from rdfcil.nets import build_model


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
    assert 460_000 < params < 480_000  # ~0.46 M as in He et al. (+ 1x1 projections)


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
