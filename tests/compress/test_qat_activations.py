"""Convs into activations other than a ReLU under a CNN's QAT (MobileNetV3's Hardswish and
Hardsigmoid, EfficientNet's SiLU, a Hardtanh from -1): each conv's output is quantized before
its activation, so that ONNX Runtime runs every conv as an int8 conv. NNCF quantized only after
the activation, and ONNX Runtime ran those convs in float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from test_distill import _cfg, cnn, toy_data
from tiny import optimized_ops, run_onnx

from kdc.compress.distill import distill
from kdc.compress.qat import export_qat, quantize_for_training
from kdc.models.vision import VisionAdapter

SOURCE = {"kind": "entrypoint", "entrypoint": "test:net", "kwargs": {}}


class _Activations(torch.nn.Module):
    """Conv → BatchNorm → activation stages: Hardswish, SiLU, Hardtanh(-1, 1), Hardsigmoid and
    ReLU6 (whose Clip ONNX Runtime drops: its conv needs no quantizer of its own)."""

    ACTIVATIONS = (
        torch.nn.Hardswish,
        torch.nn.SiLU,
        torch.nn.Hardtanh,
        torch.nn.Hardsigmoid,
        torch.nn.ReLU6,
    )

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.layers = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1), nn.BatchNorm2d(8), a()
                )
                for i, a in enumerate(self.ACTIVATIONS)
            )
        )
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(pixel_values).mean((2, 3)))


class _SqueezeExcite(torch.nn.Module):
    """A conv, then MobileNetV3's squeeze-and-excitation gate (1x1 convs into ReLU and
    Hardsigmoid), whose convs NNCF leaves in float."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1, self.fc2, self.head = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1), nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(pixel_values))
        gate = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        x = x * torch.nn.functional.hardsigmoid(self.fc2(gate))
        return self.head(x.mean((2, 3)))


class _Swish(torch.nn.Module):
    """Convs into a swish written `x * sigmoid(x)` (two ops NNCF fuses with the conv) and into
    SiLU."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values)
        x = torch.nn.functional.silu(self.conv2(x * torch.sigmoid(x)))
        return self.head(x.mean((2, 3)))


class _ChannelsLastLayerNorm(torch.nn.LayerNorm):
    """A LayerNorm over an NCHW map's channels, as ConvNeXt's (Transposes around it in ONNX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


NORMS = {
    "GroupNorm": lambda c: torch.nn.GroupNorm(2, c),
    "InstanceNorm": lambda c: torch.nn.InstanceNorm2d(c, affine=True),
    "channels-last LayerNorm": _ChannelsLastLayerNorm,
}


class _Normed(torch.nn.Module):
    """Two Conv → norm (`NORMS[norm]`, its affine weights random) → ReLU stages."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.norm1, self.norm2 = NORMS[norm](8), NORMS[norm](8)
        for n in (self.norm1, self.norm2):
            nn.init.uniform_(n.weight, 0.5, 1.5)
            nn.init.uniform_(n.bias, -0.5, 0.5)
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(pixel_values)))
        x = torch.relu(self.norm2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


HARD_SWISHES = {  # written out, as older MobileNetV3 code does
    "x * hardsigmoid(x)": lambda x: x * F.hardsigmoid(x),
    "x * relu6(x + 3) / 6": lambda x: x * F.relu6(x + 3) / 6,
    "x * (relu6(x + 3) / 6)": lambda x: x * (F.relu6(x + 3) / 6),
    "x * hardtanh(x + 3, 0, 6) / 6": lambda x: x * F.hardtanh(x + 3, 0.0, 6.0) / 6,
}


class _HardSwishes(torch.nn.Module):
    """Two convs, each into a hard swish written as `HARD_SWISHES[form]`."""

    def __init__(self, form: str) -> None:
        super().__init__()
        nn = torch.nn
        self.form = form
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        act = HARD_SWISHES[self.form]
        x = act(self.conv2(act(self.conv1(pixel_values))))
        return self.head(x.mean((2, 3)))


def _conv_output_zero_points(path) -> list[int]:
    """The zero points of the QuantizeLinear nodes of an exported graph that read a Conv."""
    graph = onnx.load(str(path)).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    return [
        int(init[n.input[2]])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "Conv"
    ]


def _quantized_conv_outputs(path) -> int:
    """How many QuantizeLinear nodes of an exported graph read a Conv."""
    return len(_conv_output_zero_points(path))


def _exported_every_conv_int8(q: VisionAdapter, data, tmp_path, convs: int) -> None:
    """`q` exported has an output quantizer of each of its `convs` convs, all int8 in ONNX
    Runtime's graph, and computes what `q` does."""
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    assert _quantized_conv_outputs(path) == convs
    optimized = optimized_ops(path, tmp_path / "optimized.onnx")
    assert optimized.count("QLinearConv") == convs, optimized
    assert not {"Conv", "FusedConv"} & set(optimized), optimized
    np.testing.assert_allclose(run_onnx(path, data.val), q.forward_numpy(data.val), atol=2e-2)


def _cpu_qat(net: torch.nn.Module, data) -> VisionAdapter:
    """`net` fake-quantized for QAT on this CPU: asymmetric activations, 7-bit weights (its u8s8
    kernels saturate on 8-bit weights: no VNNI)."""
    torch.manual_seed(0)
    return quantize_for_training(
        VisionAdapter(net.eval(), SOURCE),
        data.train,
        symmetric_activations=False,
        tensorrt=False,
        reduce_range=True,
    )


def test_cnn_qat_quantizes_conv_outputs_before_activations_so_every_conv_runs_int8(tmp_path):
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    q = _cpu_qat(_Activations(), data)
    distill(q, data, _cfg(epochs=1, lr=0.01, losses=[{"name": "logits"}]), 0, teacher=teacher)
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    assert _quantized_conv_outputs(path) == 4  # all but the ReLU6's conv
    optimized = optimized_ops(path, tmp_path / "optimized.onnx")
    assert optimized.count("QLinearConv") == 5, optimized
    assert not {"Conv", "FusedConv"} & set(optimized), optimized
    np.testing.assert_allclose(run_onnx(path, data.val), q.forward_numpy(data.val), atol=2e-2)


@pytest.mark.parametrize("family", ["small-cnn", "squeeze-excite", "tensorrt"])
def test_no_conv_output_quantizer_is_added_after_a_relu_a_float_conv_or_for_tensorrt(
    tmp_path, family
):
    """The small CNN's convs (BatchNorm, ReLU: the digits example's) quantize as before, and so
    does a squeeze-and-excitation gate's conv into a Hardsigmoid, which NNCF leaves float;
    TensorRT runs a conv and its activation as one int8 layer and keeps NNCF's placement."""
    data = toy_data(cnn((8, 16), 0))
    torch.manual_seed(0)
    trt = family == "tensorrt"
    student = {
        "small-cnn": lambda: cnn((8, 16), 0),
        "squeeze-excite": lambda: VisionAdapter(_SqueezeExcite().eval(), SOURCE),
        "tensorrt": lambda: VisionAdapter(_Activations().eval(), SOURCE),
    }[family]()
    q = quantize_for_training(student, data.train, symmetric_activations=trt, tensorrt=trt)
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx", tensorrt=trt)
    assert _quantized_conv_outputs(path) == 0


def test_a_conv_into_a_swish_written_as_a_product_gets_an_output_quantizer_too(tmp_path):
    data = toy_data(cnn((8, 16), 0))
    q = _cpu_qat(_Swish(), data)
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    assert _quantized_conv_outputs(path) == 2
    optimized = optimized_ops(path, tmp_path / "optimized.onnx")
    assert optimized.count("QLinearConv") == 2 and not {"Conv", "FusedConv"} & set(optimized)


class _PositiveIntoHardswish(torch.nn.Module):
    """A conv whose output calibration never sees negative (non-negative input and weights, a
    bias of 4) into a Hardswish."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.abs_().mul_(0.1)
            self.conv2.bias.fill_(4.0)
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.hardswish(self.conv2(torch.relu(self.conv1(pixel_values))))
        return self.head(x.mean((2, 3)))


def test_a_conv_output_never_negative_in_calibration_stays_unsigned_through_qat(tmp_path):
    """The output quantizer of a conv into a Hardswish keeps its lower bound at 0 (zero point 0)
    where calibration saw no negative value, as NNCF's own activation quantizers do
    (`_unsigned_where_never_negative`) and NNCF PTQ's UINT8 ones are: trained free (5 epochs at
    lr 0.1) it drifted to -0.22, zero point 13."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    q = _cpu_qat(_PositiveIntoHardswish(), data)
    distill(q, data, _cfg(epochs=5, lr=0.1, losses=[{"name": "logits"}]), 0, teacher=teacher)
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    assert _conv_output_zero_points(path) == [0]
    optimized = optimized_ops(path, tmp_path / "optimized.onnx")
    assert optimized.count("QLinearConv") == 2 and not {"Conv", "FusedConv"} & set(optimized)
    np.testing.assert_allclose(run_onnx(path, data.val), q.forward_numpy(data.val), atol=2e-2)


@pytest.mark.parametrize("form", HARD_SWISHES)
def test_a_conv_into_a_hard_swish_written_out_gets_an_output_quantizer_too(tmp_path, form):
    """NNCF fuses `x * relu6(x + 3) / 6` with the conv before it and quantizes after it, as it
    does nn.Hardswish; for `x * hardsigmoid(x)` it quantizes the Mul's inputs, the conv's
    output for the Mul only (its quantizer then gives way to the conv's own). Both had kept
    the convs float in ONNX Runtime."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    q = _cpu_qat(_HardSwishes(form), data)
    distill(q, data, _cfg(epochs=1, lr=0.01, losses=[{"name": "logits"}]), 0, teacher=teacher)
    _exported_every_conv_int8(q, data, tmp_path, 2)


@pytest.mark.parametrize("norm", NORMS)
def test_a_conv_into_a_norm_runs_int8(tmp_path, norm):
    """NNCF quantizes a conv's output before a GroupNorm or a LayerNorm, but only after an
    InstanceNorm: that conv ran in float. It gets an output quantizer of its own, as before an
    activation ONNX Runtime cannot drop."""
    data = toy_data(cnn((8, 16), 0))
    q = _cpu_qat(_Normed(norm), data)
    _exported_every_conv_int8(q, data, tmp_path, 2)
