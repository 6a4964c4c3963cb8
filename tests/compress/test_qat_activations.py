"""Convs into activations other than a ReLU under a CNN's QAT (MobileNetV3's Hardswish and
Hardsigmoid, EfficientNet's SiLU, a Hardtanh from -1): each conv's output is quantized before
its activation, so that ONNX Runtime runs every conv as an int8 conv. NNCF quantized only after
the activation, and ONNX Runtime ran those convs in float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
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


def _quantized_conv_outputs(path) -> int:
    """How many QuantizeLinear nodes of an exported graph read a Conv."""
    graph = onnx.load(str(path)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    return sum(
        n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "Conv" for n in graph.node
    )


def test_cnn_qat_quantizes_conv_outputs_before_activations_so_every_conv_runs_int8(tmp_path):
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    torch.manual_seed(0)
    q = quantize_for_training(
        VisionAdapter(_Activations().eval(), SOURCE),
        data.train,
        symmetric_activations=False,
        tensorrt=False,
        reduce_range=True,  # this CPU's u8s8 kernels saturate on 8-bit weights (no VNNI)
    )
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
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx", symmetric=trt)
    assert _quantized_conv_outputs(path) == 0


def test_a_conv_into_a_swish_written_as_a_product_gets_an_output_quantizer_too(tmp_path):
    data = toy_data(cnn((8, 16), 0))
    torch.manual_seed(0)
    student = VisionAdapter(_Swish().eval(), SOURCE)
    q = quantize_for_training(
        student, data.train, symmetric_activations=False, tensorrt=False, reduce_range=True
    )
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    assert _quantized_conv_outputs(path) == 2
    optimized = optimized_ops(path, tmp_path / "optimized.onnx")
    assert optimized.count("QLinearConv") == 2 and not {"Conv", "FusedConv"} & set(optimized)
