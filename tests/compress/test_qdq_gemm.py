"""A CNN's classifier (pool -> flatten -> Linear) runs as ONNX Runtime's int8 QGemm in its QAT
and NNCF PTQ graphs: NNCF leaves the bias float and dequantizes before the Flatten, and ONNX
Runtime then ran that Gemm in float (`kdc.deploy.qdq_gemm`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_distill import _cfg, cnn, toy_data
from tiny import optimized_ops, run_onnx

from kdc.compress.distill import distill
from kdc.compress.nncf_ptq import quantize_int8_nncf
from kdc.compress.qat import export_qat, quantize_for_training
from kdc.deploy.onnxruntime import make_session
from kdc.deploy.qdq_gemm import dequantize_after, int8_gemms
from kdc.export.onnx_export import export_onnx


def _classifier(beta: float = 1.0, trans_b: int = 1, axis: int = 0) -> onnx.ModelProto:
    """Q/DQ -> Flatten -> Gemm(DQ of int8 weights per channel along `axis`, float bias): NNCF's
    (`trans_b` 1, `axis` 0: per output channel) of 8 inputs and 4 outputs, or of 4 and 4 where
    `trans_b` is 0 or `axis` is not the weight's output channels'."""
    rng = np.random.default_rng(0)
    n_in = 8 if (trans_b, axis) == (1, 0) else 4
    inits = [
        numpy_helper.from_array(np.float32(0.02), "x_scale"),
        numpy_helper.from_array(np.uint8(3), "x_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (4, n_in)).astype(np.int8), "w"),
        numpy_helper.from_array(rng.uniform(0.01, 0.02, 4).astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(rng.normal(0, 1, 4).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xf"]),
        helper.make_node("Flatten", ["xf"], ["flat"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wf"], axis=axis),
        helper.make_node("Gemm", ["flat", "wf", "bias"], ["y"], transB=trans_b, beta=beta),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_in, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("trans_b", [1, 0])
def test_a_classifier_after_a_flatten_becomes_an_int8_gemm_of_the_same_values(tmp_path, trans_b):
    """NNCF's Gemm (transB 1, weights per channel along axis 0) and one of a weight stored
    input-major (transB 0, per output channel along axis 1)."""
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save(_classifier(trans_b=trans_b, axis=trans_b ^ 1), str(before))
    model = _classifier(trans_b=trans_b, axis=trans_b ^ 1)
    assert int8_gemms(model) == 1
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(after))
    before_ops = optimized_ops(before, tmp_path / "before_optimized.onnx")
    assert "QGemm" not in before_ops, before_ops  # a Gemm, or a MatMulNBits and an Add
    ops = optimized_ops(after, tmp_path / "after_optimized.onnx")
    assert "QGemm" in ops and "Gemm" not in ops, ops
    n_in = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = {"x": np.random.default_rng(1).uniform(-1, 4, (5, n_in, 1, 1)).astype(np.float32)}
    want = make_session(before, threads=1, optimization="disable").run(None, x)[0]
    for optimization in ("disable", "all"):  # Q/DQ in float, and the QGemm
        got = make_session(after, threads=1, optimization=optimization).run(None, x)[0]
        # the bias rounded to steps of 0.02 x (0.01..0.02): half a step, 2e-4, at most
        np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize(
    "why",
    ["beta 0.5", "transB 1, weights per input channel", "transB 0, weights per input channel"],
)
def test_a_gemm_onnx_runtime_would_not_fuse_keeps_its_float_bias(why):
    """QGemm takes the bias unscaled (beta 1) and the weights per tensor or per output channel:
    a square weight quantized along its input axis had its bias scaled per input channel."""
    model = {
        "beta 0.5": lambda: _classifier(beta=0.5),
        "transB 1, weights per input channel": lambda: _classifier(trans_b=1, axis=1),
        "transB 0, weights per input channel": lambda: _classifier(trans_b=0, axis=0),
    }[why]()
    assert int8_gemms(model) == 0
    assert {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT} >= {"bias"}


@pytest.mark.parametrize("method", ["qat", "nncf-ptq"])
def test_a_cnn_classifier_runs_as_an_int8_gemm(tmp_path, method):
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    if method == "qat":
        q = quantize_for_training(
            cnn((8, 16), 0), data.train, symmetric_activations=False, tensorrt=False
        )
        distill(q, data, _cfg(epochs=1, losses=[{"name": "logits"}]), 0, teacher=teacher)
        path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
        ref = q.forward_numpy(data.val)  # the fake-quantized model
    else:
        src = export_onnx(teacher, data.train, tmp_path / "model.onnx")
        x = data.train
        batches = [{k: v[s : s + 16] for k, v in x.items()} for s in range(0, 64, 16)]
        path = quantize_int8_nncf(src, tmp_path / "q.onnx", batches, symmetric_activations=False)
        ref = make_session(path, threads=1, optimization="disable").run(None, data.val)[0]
    ops = optimized_ops(path, tmp_path / "optimized.onnx")
    assert ops.count("QGemm") == 1 and "Gemm" not in ops, ops
    assert ops.count("QLinearConv") == 2 and not {"Conv", "FusedConv"} & set(ops), ops
    np.testing.assert_allclose(run_onnx(path, data.val), ref, atol=2e-2)


@pytest.mark.parametrize("tensorrt", [True, False])
def test_only_a_graph_not_built_for_tensorrt_gets_int32_gemm_biases(tensorrt):
    """`finish_qdq` by the engine: TensorRT's parser takes no int32 bias behind a
    DequantizeLinear (ONNX Runtime's PTQ keeps its biases float for it too), every other graph,
    symmetric or not, gets `int8_gemms`."""
    from kdc.deploy.qdq import finish_qdq

    model = finish_qdq(_classifier(), tensorrt)
    int32 = [t.name for t in model.graph.initializer if t.data_type == TensorProto.INT32]
    assert bool(int32) is not tensorrt, int32


def test_a_bias_beyond_int32_steps_stays_float():
    model = _classifier()
    bias = next(t for t in model.graph.initializer if t.name == "bias")
    bias.CopyFrom(numpy_helper.from_array(np.full(4, 1e9, np.float32), "bias"))  # 5e12 steps
    assert int8_gemms(model) == 0
    assert {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT} >= {"bias"}
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    assert list(flat.input) == ["xq"]  # the Flatten's DequantizeLinear moved all the same


def test_a_dequantize_another_node_reads_stays_before_the_flatten():
    model = _classifier()
    model.graph.node.append(helper.make_node("Identity", ["xf"], ["xf_too"]))
    model.graph.output.append(helper.make_tensor_value_info("xf_too", TensorProto.FLOAT, None))
    assert int8_gemms(model) == 0  # the Gemm's input is then no DequantizeLinear's
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    assert list(flat.input) == ["xf"]


def test_a_dequantize_moves_past_a_chain_of_layout_ops_keeping_the_values(tmp_path):
    """`DQ -> Reshape -> Transpose` becomes `Reshape -> Transpose -> DQ` in one pass."""
    inits = [
        numpy_helper.from_array(np.float32(0.02), "s"),
        numpy_helper.from_array(np.uint8(3), "z"),
        numpy_helper.from_array(np.array([0, 4, 2], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
        helper.make_node("Reshape", ["xf", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "before.onnx"))
    assert dequantize_after(model.graph, {"Reshape", "Transpose"}) == 2
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node][-1] == "DequantizeLinear"
    onnx.save(model, str(tmp_path / "after.onnx"))
    x = {"x": np.random.default_rng(0).uniform(-1, 4, (2, 8)).astype(np.float32)}
    got, want = (
        make_session(tmp_path / f"{k}.onnx", threads=1, optimization="disable").run(None, x)[0]
        for k in ("after", "before")
    )
    np.testing.assert_array_equal(got, want)
