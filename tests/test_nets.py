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
    assert 0.0008 < model.head.weight.std().item() < 0.0012
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
    assert model.head.weight.abs().max().item() <= bound and model.head.weight.std().item() > 0.05


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


@pytest.mark.parametrize("capacity", [None, 10])
def test_head_grows_keeps_old_weights_and_is_bias_free(capacity):
    model = build_model("resnet8", 1, 8, num_classes=capacity)
    model.head.add_task(2)
    kept = model.head.weight.detach().clone()
    model.head.add_task(3)
    assert model.head.num_classes == 5 and model.head.sizes == [2, 3]
    assert [name for name, _ in model.head.named_parameters()] == ["padded_weight"]  # no bias
    assert torch.equal(model.head.weight[:2], kept)
    f = torch.randn(4, 64)
    assert torch.allclose(model.head(f), f @ model.head.weight.t())
    assert model.head.weight.shape == (5, 64)
    padded = model.head.padded(f)
    assert padded.shape == (4, capacity or 5) and torch.allclose(padded[:, :5], model.head(f), atol=1e-7)
    assert torch.all(padded[:, 5:] == 0) and model.head.seen.tolist() == [True] * 5 + [False] * ((capacity or 5) - 5)


def test_padded_head_draws_the_rows_of_one_linear_per_task():
    """The rows of each task are the random numbers an ``nn.Linear`` of the task would draw, in
    the same order: a padded and a growing head hold the same weights after the same seed."""
    heads = []
    for capacity in (None, 12):
        torch.manual_seed(3)
        model = build_model("resnet8", 1, 8, num_classes=capacity, head_init_std=None)
        for n in (4, 4):
            model.head.add_task(n)
        heads.append(model.head.weight.detach())
    torch.manual_seed(3)
    build_model("resnet8", 1, 8)
    expected = torch.cat([torch.nn.Linear(64, 4, bias=False).weight for _ in range(2)]).detach()
    assert torch.equal(heads[0], heads[1]) and torch.equal(heads[0], expected)


def test_head_loads_a_checkpoint_of_one_linear_per_task_and_refuses_overflow():
    from rdfcil.errors import RdfcilError
    model = build_model("resnet8", 1, 8, num_classes=6)
    model.head.add_task(2)
    model.head.add_task(3)
    rows = torch.randn(5, 64)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    state |= {"head.tasks.0.weight": rows[:2], "head.tasks.1.weight": rows[2:]}
    model.load_state_dict(state)
    assert torch.equal(model.head.weight, rows) and torch.all(model.head.padded_weight[5:] == 0)
    with pytest.raises(RdfcilError, match="holds 6 classes"):
        model.head.add_task(2)
