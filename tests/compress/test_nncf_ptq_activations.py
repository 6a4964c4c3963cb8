"""NNCF's post-training INT8 of convs into activations other than a ReLU (MobileNetV3's Hardswish
and Hardsigmoid, EfficientNet's SiLU, a Hardtanh from -1): off TensorRT each such conv's output
is quantized before its activation, as QAT does (`kdc.compress.conv_outputs`), so that ONNX
Runtime runs it as an int8 conv; NNCF quantized only after the activation, and ONNX Runtime ran
those convs in float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_distill import cnn, toy_data
from test_qat_activations import SOURCE, _Activations, _SqueezeExcite
from tiny import optimized_ops, run_onnx

from kdc.compress.nncf_ptq import quantize_int8_nncf
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


def _ptq(tmp_path, student, tensorrt: bool = False, symmetric: bool | None = None):
    """`student` exported and quantized by NNCF (7-bit weights: this CPU's int8 kernels lack
    VNNI; activations symmetric for TensorRT unless `symmetric` says), the validation rows, and
    ONNX Runtime's optimised graph's op types."""
    data = toy_data(cnn((8, 16), 0))
    src = export_onnx(student, data.train, tmp_path / "model.onnx")
    batches = [{k: v[s : s + 16] for k, v in data.train.items()} for s in range(0, 64, 16)]
    dst = quantize_int8_nncf(
        src,
        tmp_path / f"q{tensorrt}.onnx",
        batches,
        symmetric_activations=tensorrt if symmetric is None else symmetric,
        reduce_range=True,
        tensorrt=tensorrt,
    )
    return dst, data.val, optimized_ops(dst, tmp_path / "optimized.onnx")


def _quantized_conv_outputs(path) -> int:
    """How many QuantizeLinear nodes of a graph read a Conv."""
    graph = onnx.load(str(path)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    return sum(
        n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "Conv" for n in graph.node
    )


def test_nncf_ptq_quantizes_conv_outputs_before_activations_so_every_conv_runs_int8(tmp_path):
    torch.manual_seed(0)
    student = VisionAdapter(_MobileStage().eval(), SOURCE)
    path, rows, ops = _ptq(tmp_path, student)
    assert _quantized_conv_outputs(path) == 6  # all but the ReLU6's conv (a Clip from 0)
    assert ops.count("QLinearConv") == 7 and not {"Conv", "FusedConv"} & set(ops), ops
    out, ref = run_onnx(path, rows), student.forward_numpy(rows)
    np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())


def test_a_squeeze_excite_gates_convs_stay_float_as_nncf_leaves_them(tmp_path):
    torch.manual_seed(0)
    student = VisionAdapter(_SqueezeExcite().eval(), SOURCE)
    path, rows, ops = _ptq(tmp_path, student)
    assert _quantized_conv_outputs(path) == 0
    assert ops.count("QLinearConv") == 1 and ops.count("Conv") == 2, ops  # the gate's two
    out, ref = run_onnx(path, rows), student.forward_numpy(rows)
    np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())


@pytest.mark.parametrize("family", ["small-cnn", "tensorrt"])
def test_relu_cnns_and_tensorrt_graphs_quantize_as_before(tmp_path, family):
    """The digits example's CNN (convs into BatchNorm and ReLU) gets the graph NNCF made before
    (as with `tensorrt`, which skips the step); TensorRT runs a conv and its activation as one int8
    layer and keeps NNCF's placement."""
    torch.manual_seed(0)
    if family == "small-cnn":
        cpu, _, _ = _ptq(tmp_path, cnn((8, 16), 0))
        before, _, _ = _ptq(tmp_path, cnn((8, 16), 0), tensorrt=True, symmetric=False)
        assert _quantized_conv_outputs(cpu) == 0
        assert onnx.load(str(cpu)).graph == onnx.load(str(before)).graph
    else:
        path, _, _ = _ptq(tmp_path, VisionAdapter(_Activations().eval(), SOURCE), tensorrt=True)
        assert _quantized_conv_outputs(path) == 0
