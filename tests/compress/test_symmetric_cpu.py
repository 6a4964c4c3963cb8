"""Symmetric activations (quantize.symmetric_activations: true) in a CNN's INT8 graph for ONNX
Runtime on a CPU, by NNCF's PTQ, ONNX Runtime's, or QAT: each signed activation is stored UINT8
with zero point 128 (the same values) and one after a ReLU stays UINT8 from 0, so every conv
runs int8, and the classifier's bias is int32 (`qdq_gemm`): an int8 QGemm. Signed, ONNX
Runtime's x86 int8 convs took an INT8 pair only where one DequantizeLinear read the
QuantizeLinear (not a residual branch, nor a conv's output a GELU's Div and Mul read), and
TensorRT's widening of a ReLU's UINT8 pair to INT8 kept the Relu before it: those convs ran in
float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_distill import cnn, toy_data
from test_nncf_ptq_activations import _Gelu, _Residual, _signed_activations
from test_qat_activations import SOURCE, _HardSwishes
from tiny import optimized_ops, run_onnx

from kdc.compress.nncf_ptq import quantize_int8_nncf
from kdc.compress.qat import SCHEMES, export_qat, quantize_for_training
from kdc.deploy.onnxruntime import activation_storage, quantize_int8
from kdc.export.onnx_export import export_onnx
from kdc.models.vision import VisionAdapter

STUDENTS = {
    "small-cnn": lambda: cnn((8, 16), 0),
    "residual": lambda: VisionAdapter(_Residual().eval(), SOURCE),
    "gelu": lambda: VisionAdapter(_Gelu().eval(), SOURCE),
    **{  # convs into a hard swish written out, each with its own (here symmetric) output quantizer
        f"hard swish {form}": lambda form=form: VisionAdapter(_HardSwishes(form).eval(), SOURCE)
        for form in ("x * hardsigmoid(x)", "x * relu6(x + 3) / 6")
    },
}


def _nncf(student, data, tmp_path):
    """The INT8 graph and the model it approximates."""
    src = export_onnx(student, data.train, tmp_path / "model.onnx")
    batches = [{k: v[s : s + 16] for k, v in data.train.items()} for s in range(0, 64, 16)]
    dst = tmp_path / "q.onnx"
    quantize_int8_nncf(src, dst, batches, symmetric_activations=True, reduce_range=True)
    return dst, student


def _onnxruntime(student, data, tmp_path):
    src = export_onnx(student, data.train, tmp_path / "model.onnx")
    batches = [{k: v[s : s + 16] for k, v in data.train.items()} for s in range(0, 64, 16)]
    dst = tmp_path / "q.onnx"
    quantize_int8(src, dst, batches, symmetric_activations=True, reduce_range=True, unsigned=True)
    return dst, student


def _qat(student, data, tmp_path):
    q = quantize_for_training(
        student, data.train, symmetric_activations=True, tensorrt=False, reduce_range=True
    )
    return export_qat(q, data.train, tmp_path / "qat.onnx", tensorrt=False), q


@pytest.mark.parametrize("method", [_nncf, _onnxruntime, _qat], ids=["nncf", "ort", "qat"])
@pytest.mark.parametrize("name", list(STUDENTS))
def test_symmetric_activations_for_onnx_runtime_run_every_conv_int8(tmp_path, method, name):
    torch.manual_seed(0)
    student = STUDENTS[name]()
    data = toy_data(cnn((8, 16), 0))
    path, model = method(student, data, tmp_path)
    ops = optimized_ops(path, tmp_path / "optimized.onnx")
    assert _signed_activations(path) == 0
    assert ops.count("QLinearConv") >= 2 and not {"Conv", "FusedConv"} & set(ops), ops
    assert ops.count("QGemm") == 1 and "Gemm" not in ops, ops  # the classifier, `qdq_gemm`
    if method is _qat:  # as the scheme build/engines.json records says
        assert "classifier an int8 QGemm (its bias int32" in SCHEMES["cnn"].how
    out, ref = run_onnx(path, data.val), model.forward_numpy(data.val)
    np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())


def test_the_record_says_how_the_graph_stores_its_symmetric_activations(tmp_path) -> None:
    """build/engines.json's `activations`, read from the graph: a CPU CNN's symmetric ones are
    UINT8 at zero point 128 (after a ReLU from 0), TensorRT's INT8."""
    torch.manual_seed(0)
    data = toy_data(cnn((8, 16), 0))
    src = export_onnx(STUDENTS["residual"](), data.train, tmp_path / "model.onnx")
    batches = [{k: v[s : s + 16] for k, v in data.train.items()} for s in range(0, 64, 16)]
    graphs = {
        unsigned: quantize_int8(
            src,
            tmp_path / f"{unsigned}.onnx",
            batches,
            symmetric_activations=True,
            unsigned=unsigned,
        )
        for unsigned in (True, False)
    }
    assert activation_storage(onnx.load(str(graphs[False])), symmetric=True) == "int8 symmetric"
    cpu = activation_storage(onnx.load(str(graphs[True])), symmetric=True)
    assert cpu.startswith("symmetric, stored uint8 at zero point 128"), cpu
    assert "int8 (" not in cpu  # none left signed
    nncf = tmp_path / "nncf.onnx"
    quantize_int8_nncf(src, nncf, batches, symmetric_activations=True)
    assert activation_storage(onnx.load(str(nncf)), symmetric=True) == (
        "symmetric, stored uint8 at zero point 128 (5 tensors) and uint8 from 0 (2 tensors)"
    )
    assert activation_storage(onnx.load(str(graphs[True])), symmetric=False) == "uint8 asymmetric"
