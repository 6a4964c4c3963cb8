"""TensorRT lint on crafted graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdc.deploy.lint import format_findings, lint_onnx
from kdc.profiles import load_profile

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    ops = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=ops)


def _vi(name, dtype=F, shape=(1, 8)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _w(name="W", shape=(8, 8)):
    return _init(name, np.ones(shape, np.float32))


def _qdq(x, out, scale="s", zp="zp"):
    return [
        helper.make_node("QuantizeLinear", [x, scale, zp], [f"{out}_q"]),
        helper.make_node("DequantizeLinear", [f"{out}_q", scale, zp], [out]),
    ]


def _by(findings, severity):
    return [f for f in findings if f.severity == severity]


@pytest.fixture(scope="module")
def jetson():
    return load_profile("jetson-orin-nano-8gb")


def _with_trt(profile, version):
    return profile.model_copy(
        update={"runtime": profile.runtime.model_copy(update={"tensorrt": version})}
    )


def test_clean_graph_has_no_errors_or_warnings(jetson):
    model = _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Softmax", ["h"], ["logits"], axis=-1),
        ],
        [_vi("x")],
        [_vi("logits")],
        [_w()],
    )
    findings = lint_onnx(model, jetson)
    assert not _by(findings, "error") and not _by(findings, "warning")
    assert format_findings(findings) == "no findings"


def test_unsupported_and_custom_ops_are_errors(jetson):
    model = _model(
        [
            helper.make_node("Unique", ["x"], ["u"], name="uniq"),
            helper.make_node("Attention", ["x"], ["logits"], name="fused", domain="com.microsoft"),
        ],
        [_vi("x")],
        [_vi("logits")],
        extra_opsets=[helper.make_opsetid("com.microsoft", 1)],
    )
    errors = _by(lint_onnx(model, jetson), "error")
    assert {(f.node, f.op) for f in errors} == {
        ("uniq", "Unique"),
        ("fused", "com.microsoft::Attention"),
    }
    text = format_findings(errors)
    assert "ERROR" in text and "error: 2, warning: 0, info: 0" in text


def test_op_newer_than_target_tensorrt(jetson):
    model = _model(
        [helper.make_node("RMSNormalization", ["x", "g"], ["logits"], name="rms")],
        [_vi("x")],
        [_vi("logits")],
        [_init("g", np.ones(8, np.float32))],
        opset=23,
    )
    findings = lint_onnx(model, jetson)
    assert any(f.op == "RMSNormalization" and "10.15" in f.message for f in _by(findings, "error"))
    assert any(f.op == "opset" and "opset 23" in f.message for f in _by(findings, "warning"))
    assert not _by(lint_onnx(model, _with_trt(jetson, "10.15")), "error")


def test_attribute_restrictions(jetson):
    model = _model(
        [helper.make_node("Resize", ["x", "", "sc"], ["logits"], mode="cubic")],
        [_vi("x", shape=(1, 1, 4, 4))],
        [_vi("logits", shape=(1, 1, 8, 8))],
        [_init("sc", np.array([1, 1, 2, 2], np.float32))],
    )
    assert any("cubic" in f.message for f in _by(lint_onnx(model, jetson), "error"))


def test_int64_input_warned_where_tensorrt_casts_it(jetson):
    model = _model(
        [helper.make_node("Gather", ["E", "input_ids"], ["logits"])],
        [_vi("input_ids", I64, ("batch", "sequence"))],
        [_vi("logits", shape=("batch", "sequence", 8))],
        [_w("E", (30, 8))],
    )
    old = lint_onnx(model, _with_trt(jetson, "8.6"))
    assert any(f.node == "input_ids" and "INT32" in f.message for f in _by(old, "warning"))
    new = lint_onnx(model, jetson)
    assert any(f.node == "input_ids" and "INT64" in f.message for f in _by(new, "info"))
    assert not _by(new, "warning")


def test_softmax_after_dequantize_is_warned(jetson):
    inits = [_init("s", np.float32(0.1)), _init("zp", np.int8(0))]
    model = _model(
        [*_qdq("x", "xd"), helper.make_node("Softmax", ["xd"], ["logits"])],
        [_vi("x")],
        [_vi("logits")],
        inits,
    )
    warnings = _by(lint_onnx(model, jetson), "warning")
    assert any(f.op == "Softmax" and "DequantizeLinear" in f.message for f in warnings)


def test_asymmetric_and_weight_only_qdq(jetson):
    inits = [
        _w(),
        _init("s", np.float32(0.1)),
        _init("zp", np.uint8(128)),
        _init("ws", np.float32(0.1)),
        _init("wzp", np.int8(0)),
    ]
    nodes = [
        *_qdq("x", "xd"),
        *_qdq("W", "Wd", "ws", "wzp"),
        helper.make_node("MatMul", ["xd", "Wd"], ["h"]),
        *_qdq("W", "Wd2", "ws", "wzp"),
        helper.make_node("MatMul", ["h", "Wd2"], ["logits"], name="weight_only"),
    ]
    findings = lint_onnx(_model(nodes, [_vi("x")], [_vi("logits")], inits), jetson)
    assert any("asymmetric" in f.message for f in _by(findings, "error"))
    weight_only = [f for f in _by(findings, "warning") if "not the activation" in f.message]
    assert [f.node for f in weight_only] == ["weight_only"]


def test_qdq_in_old_opset_is_warned(jetson):
    inits = [_init("s", np.float32(0.1)), _init("zp", np.int8(0))]
    model = _model([*_qdq("x", "logits")], [_vi("x")], [_vi("logits")], inits, opset=10)
    assert any("opset 13" in f.message for f in _by(lint_onnx(model, jetson), "warning"))


def test_dynamic_non_batch_dims_need_shapes(jetson):
    model = _model(
        [helper.make_node("Relu", ["pixel_values"], ["logits"])],
        [_vi("pixel_values", shape=("batch", 3, "height", "width"))],
        [_vi("logits", shape=("batch", 3, "height", "width"))],
    )
    dims = [f for f in _by(lint_onnx(model, jetson), "warning") if f.node == "pixel_values"]
    assert len(dims) == 2 and "axis 2" in dims[0].message
    shapes = {"pixel_values": [1, 3, 224, 224]}
    assert not _by(lint_onnx(model, jetson, input_shapes=shapes), "warning")


def test_dla_table_on_a_profile_with_dla():
    agx = load_profile("jetson-agx-orin-64gb")
    inits = [_init("g", np.ones(8, np.float32))]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g"], ["n1"], name="ln1"),
        helper.make_node("LayerNormalization", ["n1", "g"], ["n2"], name="ln2"),
        helper.make_node("Transpose", ["n2"], ["t"], perm=[1, 0]),
        helper.make_node("MatMul", ["n2", "t"], ["h"], name="qk"),
        helper.make_node("Softmax", ["h"], ["logits"], name="sm", axis=-1),
    ]
    model = _model(nodes, [_vi("x", shape=(8, 8))], [_vi("logits", shape=(8, 8))], inits)
    warnings = {f.op: f for f in _by(lint_onnx(model, agx), "warning")}
    assert warnings["LayerNormalization"].node == "ln1 (+1 more)"
    assert "two activations" in warnings["MatMul"].message
    assert "non-channel axis" in warnings["Softmax"].message
    jetson = load_profile("jetson-orin-nano-8gb")
    assert not _by(lint_onnx(model, jetson), "warning")
    for version in ("11.0", "10.8"):  # 10.7 was the last release with DLA
        info = _by(lint_onnx(model, _with_trt(agx, version)), "info")
        assert any(f.op == "DLA" and version in f.message for f in info), version
        assert not _by(lint_onnx(model, _with_trt(agx, version)), "warning")


def test_profile_without_tensorrt_and_path_input(tmp_path):
    model = _model([helper.make_node("Unique", ["x"], ["logits"])], [_vi("x")], [_vi("logits")])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert _by(lint_onnx(path, load_profile("jetson")), "error")
    assert [f.severity for f in lint_onnx(path, load_profile("host"))] == ["info"]


def test_quantized_bias_is_an_error(jetson):
    """ONNX Runtime's default int32 bias behind a DequantizeLinear fails TensorRT's parser."""
    inits = [
        _w(),
        _init("s", np.float32(0.1)),
        _init("zp", np.int8(0)),
        _init("b_q", np.array([3, -2, 1], dtype=np.int32)),
        _init("bs", np.float32(0.01)),
        _init("bzp", np.int32(0)),
    ]
    nodes = [
        *_qdq("x", "xd"),
        helper.make_node("DequantizeLinear", ["b_q", "bs", "bzp"], ["bd"], name="bias_dq"),
        helper.make_node("MatMul", ["xd", "W"], ["h"]),
        helper.make_node("Add", ["h", "bd"], ["logits"]),
    ]
    errors = _by(lint_onnx(_model(nodes, [_vi("x")], [_vi("logits")], inits), jetson), "error")
    assert [(f.node, f.op) for f in errors] == [("bias_dq", "DequantizeLinear")]
    assert "INT32" in errors[0].message and "QuantizeBias=False" in errors[0].fix


def test_a_uint8_weight_names_the_cpu_scheme_not_a_bias(jetson):
    """A host run's INT8 graph (uint8, asymmetric) bundled for TensorRT: the fix is to quantize
    for the TensorRT target, not a bias option kdc does not expose."""
    inits = [
        _init("w_q", np.array([[3, 200], [1, 7]], dtype=np.uint8)),
        _init("ws", np.float32(0.1)),
        _init("wzp", np.uint8(128)),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "ws", "wzp"], ["W"], name="w_dq"),
        helper.make_node("MatMul", ["x", "W"], ["logits"]),
    ]
    errors = _by(lint_onnx(_model(nodes, [_vi("x")], [_vi("logits")], inits), jetson), "error")
    bad = next(f for f in errors if "UINT8" in f.message)
    assert "asymmetric CPU-scheme weight" in bad.message and "--target" in bad.fix


def test_an_activation_quantized_before_a_maxpool_still_feeds_int8(jetson):
    """TensorRT moves a DequantizeLinear past MaxPool/Flatten: Q/DQ → MaxPool → Flatten → Gemm
    with quantized weights is INT8 math, not 'weights quantized but not the activation'."""
    inits = [
        _init("w_q", np.ones((8, 8), np.int8)),
        _init("s", np.float32(0.1)),
        _init("zp", np.int8(0)),
    ]
    weights = helper.make_node("DequantizeLinear", ["w_q", "s", "zp"], ["W"], name="w_dq")

    def warned(pooled: bool) -> bool:
        head = [
            helper.make_node("MaxPool", ["xd"], ["p"], kernel_shape=[1]),
            helper.make_node("Flatten", ["p"], ["f"]),
        ]
        nodes = [*_qdq("x", "xd"), weights, *(head if pooled else [])]
        nodes.append(helper.make_node("MatMul", ["f" if pooled else "x", "W"], ["logits"]))
        found = lint_onnx(_model(nodes, [_vi("x")], [_vi("logits")], inits), jetson)
        return any("not the activation" in f.message for f in found)

    assert not warned(pooled=True)
    assert warned(pooled=False)  # the activation really is float there
