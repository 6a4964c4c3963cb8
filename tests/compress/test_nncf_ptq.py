"""NNCF's post-training INT8 of a CNN: every conv, a depthwise one included, runs as an int8
conv in ONNX Runtime (the exported FP32 graph it quantizes has its BatchNorms folded already)."""

from __future__ import annotations

import onnx
from test_distill import cnn, toy_data
from test_fold_bn import pruned_depthwise_student
from tiny import optimized_ops

from kdc.compress.nncf_ptq import quantize_int8_nncf
from kdc.export.onnx_export import export_onnx


def test_a_depthwise_convs_input_is_quantized_per_tensor_so_every_conv_runs_int8(tmp_path):
    """NNCF's CPU setup quantized a depthwise conv's input per channel, which ONNX Runtime's
    QLinearConv does not take: that conv and the one before it stayed float convs."""
    x = toy_data(cnn((8, 16), 0)).train
    student = pruned_depthwise_student(x["pixel_values"][:2])
    src = export_onnx(student, x, tmp_path / "model.onnx")
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(src)).graph.node}
    batches = [{k: v[s : s + 16] for k, v in x.items()} for s in range(0, 64, 16)]
    dst = quantize_int8_nncf(src, tmp_path / "q.onnx", batches, symmetric_activations=False)
    ops = optimized_ops(dst, tmp_path / "optimized.onnx")
    assert ops.count("QLinearConv") == 4 and not {"Conv", "FusedConv"} & set(ops), ops
