"""Quantization-aware training (NNCF) on a CNN: trains with the KD losses, exports a QDQ ONNX
model of standard ops that ONNX Runtime runs; transformers are refused with a clear error."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_distill import _cfg, cnn, toy_data

from kdc.compress.distill import distill
from kdc.compress.qat import check_supported, export_qat, non_standard_ops, quantize_for_training
from kdc.errors import UserError


def test_cnn_qat_exports_standard_qdq_onnx(tmp_path):
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    student = cnn((8, 16), 0)  # starts from the teacher's weights, as derived students do
    q = quantize_for_training(student, data.train, symmetric_activations=True, tensorrt=True)
    assert q.module is not student.module  # the float student is left untouched
    res = distill(q, data, _cfg(epochs=1, losses=[{"name": "logits"}]), 0, teacher=teacher)
    assert len(res.history) == 1 and res.history[0]["loss"] is not None
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert non_standard_ops(model) == [] and "FakeQuantize" not in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, data.val)[0]
    ref = q.forward_numpy(data.val)  # the fake-quantized PyTorch model it was exported from
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_transformer_qat_is_a_user_error():
    with pytest.raises(UserError, match="quantize.method"):
        check_supported("transformer")
    check_supported("cnn")


def test_stage_writes_the_qat_onnx_beside_the_float_student(cnn_project, tmp_path):
    import json

    import yaml
    from tiny import write_yaml

    from kdc import api

    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(cnn_project.parent / "teacher.safetensors")
    cfg["distill"].update(epochs=1, augment="shift")  # the teacher runs in training
    cfg["quantize"].update(method="qat", qat_epochs=1)
    path = write_yaml(tmp_path / "model.yaml", cfg)
    api.search(path, "jetson", tmp_path / "run", quiet=True)
    api.distill(path, "jetson", tmp_path / "run", quiet=True)
    rec = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["distill"]
    assert "distill/student_qat.onnx" in rec["outputs"]
    assert rec["metrics"]["qat_val_accuracy"] > 0.5
    assert rec["metrics"]["qat_teacher_rows"]["rows_run"] > 0
    model = onnx.load(str(tmp_path / "run" / "distill" / "student_qat.onnx"))
    assert non_standard_ops(model) == []
