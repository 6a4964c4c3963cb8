"""BatchNorm folded into the conv before it (a CNN's QAT): the folded model computes what the
model did in eval mode, pruned and depthwise students included; a BatchNorm is left alone where
folding it could change the outputs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from kdc.compress.fold_bn import conv_bn_pairs, fold_batchnorm, recalibrate, unfolded_batchnorms
from kdc.models.cnn import small_cnn
from kdc.models.vision import VisionAdapter

SOURCE = {"kind": "entrypoint", "entrypoint": "test:net", "kwargs": {}}


class DepthwiseNet(nn.Module):
    """MobileNet-like: a full conv, a depthwise one, each with a BatchNorm; a pointwise conv
    and a grouped one without."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 32, 1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 4),
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)


def trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` in eval mode with BatchNorm statistics and affine parameters far from their
    initial identity, as a trained student's are."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.1)
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))
    return model.eval()


def pruned_depthwise_student(x: np.ndarray) -> VisionAdapter:
    """A `DepthwiseNet` on one-channel images like `x`, pruned to half its channels."""
    torch.manual_seed(0)
    net = VisionAdapter(trained_statistics(DepthwiseNet(in_channels=1)), SOURCE)
    return net.shrink(0.5, 1, {"pixel_values": x})


def _assert_folds_exactly(model: nn.Module, x: torch.Tensor, pairs: int) -> None:
    with torch.no_grad():
        want = model(x)
        assert len(fold_batchnorm(model)) == pairs
        got = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class BasicBlock(nn.Module):
    """ResNet's block with a projection shortcut: three conv → BatchNorm pairs, the sum reading
    BatchNorm outputs only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.down = nn.Sequential(nn.Conv2d(1, 8, 1, 2, bias=False), nn.BatchNorm2d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.down(x))


@pytest.mark.parametrize(
    ("model", "pairs"),
    [(small_cnn(num_classes=4, channels=(8, 16), depth=2), 4), (BasicBlock(), 3)],
    ids=["small-cnn", "residual"],
)
def test_folding_keeps_a_cnns_eval_outputs(model, pairs):
    torch.manual_seed(0)
    model = trained_statistics(model)
    _assert_folds_exactly(model, torch.randn(6, 1, 8, 8), pairs=pairs)
    folded = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None and m.bias.requires_grad for m in folded)  # the bias trains


@pytest.mark.parametrize("pruned", [False, True])
def test_folding_keeps_a_depthwise_students_outputs_pruned_or_not(pruned):
    torch.manual_seed(0)
    net = VisionAdapter(trained_statistics(DepthwiseNet()), SOURCE)
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    student = net.shrink(0.5, 1, {"pixel_values": x}) if pruned else net
    if pruned:  # torch-pruning cut the depthwise conv with its channels
        assert [m.groups for m in student.module.modules() if isinstance(m, nn.Conv2d)] == [
            1,
            8,
            1,
            4,
        ]
    _assert_folds_exactly(student.module, torch.from_numpy(x), pairs=2)


def test_folding_with_batches_re_estimates_stale_statistics_first():
    """Given calibration batches, a folded BatchNorm's statistics are those of the conv output on
    their rows (the average of the batches' statistics; a one-row batch is skipped), not the
    stale ones it held: the folded conv's output has the BatchNorm's shift as its mean. The
    BatchNorms are left in eval mode with their momentum, a Dropout between them off while
    they were re-estimated (the same statistics twice), a BatchNorm not folded untouched."""
    torch.manual_seed(0)
    model = trained_statistics(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(4, 4, 3),
            nn.BatchNorm2d(4),
            nn.MaxPool2d(1),
            nn.BatchNorm2d(4),  # reads no conv: not folded
        )
    )
    x = torch.randn(32, 1, 8, 8)
    batches = [(x[i : i + 8],) for i in range(0, 32, 8)] + [(x[:1],)]
    with torch.no_grad():
        conv_out = model[0](x)
    stale = model[7].running_mean.clone()
    recalibrate(model, [model[1], model[5]], batches)
    first = (model[1].running_mean.clone(), model[5].running_mean.clone())
    torch.testing.assert_close(first[0], conv_out.mean((0, 2, 3)))
    variances = [conv_out[i : i + 8].var((0, 2, 3)) for i in range(0, 32, 8)]
    torch.testing.assert_close(model[1].running_var, torch.stack(variances).mean(0))
    recalibrate(model, [model[1], model[5]], batches)
    torch.testing.assert_close(model[5].running_mean, first[1], rtol=0, atol=0)
    assert not model.training and not any(m.training for m in model.modules())
    assert model[1].momentum == model[5].momentum == 0.1
    assert torch.equal(model[7].running_mean, stale)

    model = trained_statistics(model)  # stale again
    beta = model[1].bias.clone()
    assert len(fold_batchnorm(model, batches)) == 2
    with torch.no_grad():
        torch.testing.assert_close(model[0](x).mean((0, 2, 3)), beta, rtol=0, atol=1e-5)
    assert isinstance(model[7], nn.BatchNorm2d)


class Residual(nn.Module):
    """conv → bn whose conv output is also added after the BatchNorm: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class Shared(nn.Module):
    """One conv called twice, once into a BatchNorm: folding would change the other call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


class Branching(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if x.sum() > 0 else x


def _weight_normed() -> nn.Module:
    """A conv whose weight_norm pre-hook recomputes its weight from weight_g and weight_v on
    every call (it raised TypeError on the folded weight: an internal error in QAT)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm: deprecated, still in use
        return nn.Sequential(nn.utils.weight_norm(nn.Conv2d(4, 4, 1)), nn.BatchNorm2d(4))


def _output_hooked() -> nn.Module:
    """A conv whose forward hook changes the output the BatchNorm reads; torch.fx sees no hook."""
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    model[0].register_forward_hook(lambda m, args, out: out * 2)
    return model


@pytest.mark.parametrize(
    "model",
    [
        Residual(),
        Shared(),
        Branching(),
        nn.Sequential(nn.MaxPool2d(1), nn.BatchNorm2d(4)),  # no conv before it
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)),
        _weight_normed(),
        _output_hooked(),
    ],
    ids=[
        "read-elsewhere",
        "shared-conv",
        "untraceable",
        "no-conv",
        "batch-statistics",
        "weight-norm",
        "output-hook",
    ],
)
def test_a_batchnorm_folding_could_change_is_left(model):
    model = trained_statistics(model)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        want = model(x)
        assert conv_bn_pairs(model) == [] and fold_batchnorm(model) == []
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)


def test_unfolded_batchnorms_are_those_after_a_conv():
    def bn(name: str, src: str) -> onnx.NodeProto:
        return helper.make_node(
            "BatchNormalization", [src, "s", "b", "m", "v"], [f"{name}_out"], name
        )

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
        bn("after_conv", "c"),
        helper.make_node("Relu", ["after_conv_out"], ["r"], "relu"),
        bn("after_relu", "r"),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    assert unfolded_batchnorms(helper.make_model(graph)) == ["after_conv"]
