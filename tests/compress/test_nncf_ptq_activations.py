"""NNCF's post-training INT8 of convs into activations other than a ReLU (MobileNetV3's Hardswish
and Hardsigmoid, EfficientNet's SiLU, a Hardtanh from -1): off TensorRT each such conv's output
is quantized before its activation, as QAT does (`kdc.compress.conv_outputs`), so that ONNX
Runtime runs it as an int8 conv; NNCF quantized only after the activation, and ONNX Runtime ran
those convs in float."""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

import numpy as np
import onnx
import pytest
import torch
from test_distill import cnn, toy_data
from test_qat_activations import (
    HARD_SWISHES,
    NORMS,
    SOURCE,
    _Activations,
    _HardSwishes,
    _Normed,
    _quantized_conv_outputs,
    _SqueezeExcite,
)
from tiny import optimized_ops, run_onnx

from kdc.compress.nncf_ptq import quantize_int8_nncf
from kdc.deploy import qdq
from kdc.export.onnx_export import export_onnx
from kdc.models.vision import VisionAdapter


class _MobileStage(_Activations):
    """Conv → BatchNorm → Hardswish, SiLU (Sigmoid and Mul in ONNX), Hardtanh(-1, 1),
    Hardsigmoid, LeakyReLU, Sigmoid, ReLU6."""

    ACTIVATIONS = (
        torch.nn.Hardswish,
        torch.nn.SiLU,
        torch.nn.Hardtanh,
        torch.nn.Hardsigmoid,
        torch.nn.LeakyReLU,
        torch.nn.Sigmoid,
        torch.nn.ReLU6,
    )


class _Gelu(_Activations):
    """Conv → BatchNorm → GELU stages, as in a ConvNeXt block's MLP of 1x1 convs."""

    ACTIVATIONS = (torch.nn.GELU, torch.nn.GELU, torch.nn.GELU)


class _TanhGelu(_Activations):
    """Conv → BatchNorm → GELU stages, its tanh approximation."""

    ACTIVATIONS = (functools.partial(torch.nn.GELU, approximate="tanh"),) * 3


class _ConvNeXt(torch.nn.Module):
    """A stem conv into a norm (`NORMS[norm]`, as initialised: a GroupNorm's affine Mul and Add
    then fold away), then two ConvNeXt blocks: a depthwise conv into the norm, a 1x1 conv
    reading it into a GELU, a 1x1 conv back, and the residual Add."""

    def __init__(self, norm: str, c: int = 8) -> None:
        super().__init__()
        nn = torch.nn
        self.stem, self.stem_norm = nn.Conv2d(1, c, 2, stride=2), NORMS[norm](c)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, groups=c),
                NORMS[norm](c),
                nn.Conv2d(c, 4 * c, 1),
                nn.GELU(),
                nn.Conv2d(4 * c, c, 1),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(c, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(pixel_values))
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


class _Residual(torch.nn.Module):
    """A branch below 0 (a conv without activation) read by a conv and by the Add of a residual,
    as in a MobileNetV3 block whose input and output widths match."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv, self.project = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.expand, self.project2 = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        y = self.project(torch.relu(self.conv(pixel_values)))
        z = self.project2(torch.relu(self.expand(y)))
        return self.head((y + z).mean((2, 3)))


def _ptq(
    tmp_path,
    student,
    tensorrt: bool = False,
    symmetric: bool | None = None,
    unsigned: bool = True,
    opset: int = 17,
):
    """`student` exported (at `opset`) and quantized by NNCF (7-bit weights: this CPU's int8
    kernels lack VNNI; activations symmetric for TensorRT unless `symmetric` says; not
    `unsigned`: NNCF's own INT8 activations, `qdq.unsigned_activations` skipped), the validation
    rows, and ONNX Runtime's optimised graph's op types."""
    data = toy_data(cnn((8, 16), 0))
    src = export_onnx(student, data.train, tmp_path / "model.onnx", opset=opset)
    batches = [{k: v[s : s + 16] for k, v in data.train.items()} for s in range(0, 64, 16)]
    dst = tmp_path / f"q{tensorrt}{symmetric}{unsigned}.onnx"
    as_is = mock.patch.object(qdq, "unsigned_activations", lambda q: q)
    with contextlib.nullcontext() if unsigned else as_is:
        quantize_int8_nncf(
            src,
            dst,
            batches,
            symmetric_activations=tensorrt if symmetric is None else symmetric,
            reduce_range=True,
            tensorrt=tensorrt,
        )
    return dst, data.val, optimized_ops(dst, tmp_path / "optimized.onnx")


def _ptq_every_conv_int8(
    tmp_path, student, quantized: int, convs: int, opset: int = 17, atol: float = 0.05
):
    """`student` quantized off TensorRT (`_ptq`) with `quantized` conv output quantizers, its
    `convs` convs all int8 in ONNX Runtime's graph, its outputs within `atol` of the largest
    float one: the graph's path."""
    path, rows, ops = _ptq(tmp_path, student, opset=opset)
    assert _quantized_conv_outputs(path) == quantized
    assert ops.count("QLinearConv") == convs and not {"Conv", "FusedConv"} & set(ops), ops
    out, ref = run_onnx(path, rows), student.forward_numpy(rows)
    np.testing.assert_allclose(out, ref, atol=atol * np.abs(ref).max())
    return path


def _signed_activations(path) -> int:
    """How many QuantizeLinear nodes of a graph quantize a computed tensor to INT8."""
    graph = onnx.load(str(path)).graph
    init = {i.name: i for i in graph.initializer}
    return sum(
        n.op_type == "QuantizeLinear"
        and n.input[0] not in init
        and init[n.input[2]].data_type == onnx.TensorProto.INT8
        for n in graph.node
    )


def test_nncf_ptq_quantizes_conv_outputs_before_activations_so_every_conv_runs_int8(tmp_path):
    torch.manual_seed(0)
    student = VisionAdapter(_MobileStage().eval(), SOURCE)
    _ptq_every_conv_int8(
        tmp_path, student, 6, 7
    )  # no quantizer of the ReLU6's conv (a Clip from 0)


@pytest.mark.parametrize("form", HARD_SWISHES)
def test_a_conv_into_a_hard_swish_written_out_runs_int8(tmp_path, form):
    """NNCF fuses `x * relu6(x + 3) / 6` with the conv before it, as it does a Hardswish, and
    ONNX Runtime ran that conv in float; `x * hardsigmoid(x)` and `x * (relu6(x + 3) / 6)`,
    which NNCF's ONNX graph quantizes within, ran int8 already."""
    torch.manual_seed(0)
    student = VisionAdapter(_HardSwishes(form).eval(), SOURCE)
    _ptq_every_conv_int8(tmp_path, student, 2, 2)


@pytest.mark.parametrize(
    ("opset", "op", "net"),
    [(17, "Erf", _Gelu), (20, "Gelu", _Gelu), (17, "Tanh", _TanhGelu), (20, "Gelu", _TanhGelu)],
)
def test_a_conv_into_a_gelu_gets_an_output_quantizer_and_runs_int8(tmp_path, opset, op, net):
    """Below opset 20 torch.onnx writes GELU out (Div, Erf, Add, Mul, Mul), from 20 as one
    Gelu, which NNCF knows no metatype of: it quantized after either, and the conv ran float.
    Its tanh approximation written out (Mul, Mul, Mul, Add, Mul, Tanh, Add, Mul, Mul) NNCF
    fuses with nothing: it quantizes the conv's output for the first Mul (x * x) itself; as
    one Gelu (approximate "tanh") it is a GELU like the other."""
    torch.manual_seed(0)
    student = VisionAdapter(net().eval(), SOURCE)
    path = _ptq_every_conv_int8(tmp_path, student, 3, 3, opset=opset)
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count(op) == 3


@pytest.mark.parametrize("norm", NORMS)
def test_a_conv_into_a_norm_gets_an_output_quantizer_and_runs_int8(tmp_path, norm):
    """NNCF quantizes only after a GroupNorm (Reshape, InstanceNormalization, Reshape, Mul,
    Add in ONNX), a LayerNorm between Transposes, an InstanceNorm, and ONNX Runtime ran the
    conv before it in float, slower than the float graph's (a 4-conv GroupNorm CNN on 64x64
    images, 1 thread: 1.44 ms int8 against 0.97 ms float; 0.68 ms with every conv int8)."""
    torch.manual_seed(0)
    student = VisionAdapter(_Normed(norm).eval(), SOURCE)
    _ptq_every_conv_int8(tmp_path, student, 2, 2, atol=0.15)  # the graph without them: 0.1


@pytest.mark.parametrize("norm", ["GroupNorm", "channels-last LayerNorm"])
def test_every_conv_of_a_convnext_runs_int8(tmp_path, norm):
    """The stem and depthwise convs feed norms (`test_a_conv_into_a_norm_...`); a block's first
    1x1 conv reads NNCF's DequantizeLinear of the norm's output through a layout op (the
    GroupNorm's last Reshape, the LayerNorm's Transpose back to NCHW), which ONNX Runtime
    moves the DequantizeLinear past (its QDQ propagation): taken as an int8 input
    (`nncf_ptq.LAYOUT_OPS`), that conv into a GELU gets its output quantizer too. 2 of the 7
    convs had run int8."""
    torch.manual_seed(0)
    student = VisionAdapter(_ConvNeXt(norm).eval(), SOURCE)
    _ptq_every_conv_int8(tmp_path, student, 7, 7)


def test_a_squeeze_excite_gates_convs_stay_float_as_nncf_leaves_them(tmp_path):
    torch.manual_seed(0)
    student = VisionAdapter(_SqueezeExcite().eval(), SOURCE)
    path, rows, ops = _ptq(tmp_path, student)
    assert _quantized_conv_outputs(path) == 0
    assert ops.count("QLinearConv") == 1 and ops.count("Conv") == 2, ops  # the gate's two
    out, ref = run_onnx(path, rows), student.forward_numpy(rows)
    np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())


def test_activations_below_0_are_unsigned_so_the_convs_around_a_residual_run_int8(tmp_path):
    """NNCF quantized the branch INT8; ONNX Runtime made it UINT8 for its x86 int8 convs only
    where one DequantizeLinear read it, and ran the conv writing the branch and the one reading
    it in float. UINT8 with the zero point 128 up holds the same values."""
    from kdc.deploy.onnxruntime import make_session, run_session

    torch.manual_seed(0)
    student = VisionAdapter(_Residual().eval(), SOURCE)
    path, rows, ops = _ptq(tmp_path, student)
    assert ops.count("QLinearConv") == 4 and not {"Conv", "FusedConv"} & set(ops), ops
    signed, _, _ = _ptq(tmp_path, student, unsigned=False)  # NNCF's own
    assert _signed_activations(signed) > 0 and _signed_activations(path) == 0
    as_is = [run_session(make_session(p, optimization="disable"), rows) for p in (path, signed)]
    np.testing.assert_array_equal(*as_is)


@pytest.mark.parametrize("family", ["small-cnn", "tensorrt"])
def test_relu_cnns_and_tensorrt_graphs_quantize_as_before(tmp_path, family):
    """The digits example's CNN (convs into BatchNorm and ReLU) gets the Q/DQ nodes NNCF placed
    (as NNCF's own), its activations UINT8 where NNCF made them INT8: the same
    values, and ONNX Runtime optimises both into the same graph (it made those UINT8 itself).
    TensorRT runs a conv and its activation as one int8 layer and keeps NNCF's placement."""
    from kdc.deploy.onnxruntime import make_session, run_session

    def nodes(path) -> list:
        return [(n.op_type, list(n.input), list(n.output)) for n in onnx.load(str(path)).graph.node]

    torch.manual_seed(0)
    if family == "small-cnn":
        cpu, rows, ops = _ptq(tmp_path, cnn((8, 16), 0))
        before, _, ops_before = _ptq(tmp_path, cnn((8, 16), 0), unsigned=False)
        assert _quantized_conv_outputs(cpu) == 0 and nodes(cpu) == nodes(before)
        assert ops == ops_before and ops.count("QLinearConv") == 2, ops
        as_is = [run_session(make_session(p, optimization="disable"), rows) for p in (cpu, before)]
        np.testing.assert_array_equal(*as_is)
    else:
        path, _, _ = _ptq(tmp_path, VisionAdapter(_Activations().eval(), SOURCE), tensorrt=True)
        assert _quantized_conv_outputs(path) == 0
