"""The masked-softmax floor: exact outputs, only attention-mask softmaxes, both ReduceMax forms,
undone for TensorRT bundles, applied to the build stage's ONNX Runtime graphs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdc.config import BuildConfig, QuantizeConfig
from kdc.deploy.bundle import write_bundle
from kdc.deploy.onnxruntime import quantize_int8
from kdc.deploy.softmax_floor import (
    PREFIX,
    floor_file,
    floor_masked_softmax,
    remove_floor,
    remove_floor_file,
)
from kdc.export.onnx_export import export_onnx
from kdc.profiles import load_profile
from kdc.rundir import RunDir, write_json
from kdc.stages import build
from tests.helpers.tiny import floors, run_onnx, tiny_text_adapter


def _bert_inputs(rows: int = 3, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((rows, length), np.int64)
    for r, real in enumerate(rng.integers(2, length, rows)):
        mask[r, :real] = 1  # mostly padded rows, as the slow path needs
    ids = rng.integers(5, 20, (rows, length)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("floor")
    adapter = tiny_text_adapter(tmp, layers=2)
    return export_onnx(adapter, _bert_inputs(rows=2), tmp / "bert.onnx")


def test_every_attention_softmax_is_floored_and_outputs_do_not_change(bert_onnx, tmp_path):
    x = _bert_inputs()
    dst = tmp_path / "floored.onnx"
    dst.write_bytes(bert_onnx.read_bytes())
    assert floor_file(dst) == 2 and floors(dst) == 2
    np.testing.assert_array_equal(run_onnx(dst, x), run_onnx(bert_onnx, x))
    assert floor_file(dst) == 0  # already floored: unchanged


def test_removing_the_floor_gives_back_the_graph(bert_onnx):
    model = onnx.load(str(bert_onnx))
    before = [(n.op_type, list(n.input)) for n in model.graph.node]
    inits = len(model.graph.initializer)
    assert floor_masked_softmax(model) == 2
    assert remove_floor(model) == 2
    assert [(n.op_type, list(n.input)) for n in model.graph.node] == before
    assert len(model.graph.initializer) == inits
    assert not any(n.name.startswith(PREFIX) for n in model.graph.node)


def test_an_int8_graph_keeps_its_outputs(bert_onnx, tmp_path):
    x = _bert_inputs(seed=1)
    calib = [_bert_inputs(seed=2 + i) for i in range(4)]
    int8 = quantize_int8(
        bert_onnx, tmp_path / "q.onnx", calib, symmetric_activations=False, op_types=["MatMul"]
    )
    plain = run_onnx(int8, x)
    assert floor_file(int8) == 2
    np.testing.assert_array_equal(run_onnx(int8, x), plain)


def _attention_graph(opset: int, bias: str) -> onnx.ModelProto:
    """scores = q·kᵀ (+ a mask input, or + a constant bias) → Softmax."""
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("q", f, [1, 2, 8, 4]),
        helper.make_tensor_value_info("kt", f, [1, 2, 4, 8]),
    ]
    nodes = []
    if bias == "mask":
        inputs.append(helper.make_tensor_value_info("mask", f, [1, 1, 1, 8]))
    else:  # a Constant node (no inputs at all)
        bias_value = numpy_helper.from_array(np.full((1, 1, 1, 8), -3.0, np.float32))
        nodes.append(helper.make_node("Constant", [], ["mask"], value=bias_value))
    nodes += [
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Add", ["s", "mask"], ["sm"]),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("p", f, [1, 2, 8, 8])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_reduce_max_takes_its_axes_as_each_opset_wants(opset, tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 1, 1, 8), np.float32)
    mask[..., 3:] = np.finfo(np.float32).min
    x = {
        "q": rng.normal(size=(1, 2, 8, 4)).astype(np.float32) * 3,
        "kt": rng.normal(size=(1, 2, 4, 8)).astype(np.float32),
        "mask": mask,
    }
    model = _attention_graph(opset, "mask")
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "plain.onnx"))
    assert floor_masked_softmax(model) == 1
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "floored.onnx"))
    plain, floored = run_onnx(tmp_path / "plain.onnx", x), run_onnx(tmp_path / "floored.onnx", x)
    np.testing.assert_array_equal(floored[..., :3], plain[..., :3])
    assert (plain[..., 3:] == 0).all() and (floored[..., 3:] < 1e-34).all()  # exp(-80) at most


def test_a_constant_bias_another_axis_or_half_precision_is_left_alone(tmp_path):
    assert floor_masked_softmax(_attention_graph(17, "constant")) == 0
    model = _attention_graph(17, "mask")
    model.graph.node[-1].attribute[0].i = 2  # a Softmax over another axis
    assert floor_masked_softmax(model) == 0
    model = _attention_graph(17, "mask")
    model.graph.value_info.append(helper.make_tensor_value_info("sm", TensorProto.FLOAT16, None))
    assert floor_masked_softmax(model) == 0  # the floor's constant is float32


def test_a_tensorrt_bundle_gets_the_graph_without_the_floor(tmp_path):
    model = _attention_graph(17, "mask")
    floor_masked_softmax(model)
    onnx.save(model, str(tmp_path / "floored.onnx"))
    x = {"q": np.ones((1, 2, 8, 4), np.float32), "kt": np.ones((1, 2, 4, 8), np.float32)}
    x["mask"] = np.zeros((1, 1, 1, 8), np.float32)
    y = run_onnx(tmp_path / "floored.onnx", x)
    shapes = {k: list(v.shape) for k, v in x.items()}
    out = write_bundle(
        tmp_path / "b",
        tmp_path / "floored.onnx",
        load_profile("jetson"),
        precision="fp16",
        input_shapes=shapes,
        golden_inputs=x,
        golden_outputs=y,
    )
    assert floors(out / "model.onnx") == 0 and floors(tmp_path / "floored.onnx") == 1
    assert remove_floor_file(tmp_path / "floored.onnx") == 1
    assert remove_floor_file(tmp_path / "floored.onnx") == 0


@pytest.fixture(scope="module")
def fusable_onnx(tmp_path_factory):
    """The export stage's transformer export (unslimmed), whose attention ORT can fuse."""
    tmp = tmp_path_factory.mktemp("fusable")
    adapter = tiny_text_adapter(tmp, layers=2)
    return export_onnx(adapter, _bert_inputs(rows=2), tmp / "bert.onnx", simplify=False)


@pytest.mark.parametrize(
    ("target", "setting", "engines", "floored"),
    [
        ("host", True, None, 2),
        ("host", False, None, 0),
        ("jetson", True, None, 0),
        ("jetson", True, ["onnxruntime"], 2),
        ("host", True, ["onnxruntime", "tensorrt"], 2),  # no TensorRT on host: ONNX Runtime's
    ],
)
def test_the_build_stage_floors_its_onnxruntime_int8_graph(
    fusable_onnx, tmp_path, target, setting, engines, floored
):
    """Unless `build.softmax_floor` is off or a TensorRT engine is built from the graph
    (`build.for_tensorrt`, not merely named in build.engines)."""
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "student_qat.onnx").write_bytes(fusable_onnx.read_bytes())
    write_json(
        tmp_path / "distill" / "student.json",
        {"architecture": {"hidden_size": 32, "num_attention_heads": 2}},
    )
    quantize = QuantizeConfig(precision="int8", method="qat")
    ctx = SimpleNamespace(
        run=RunDir(tmp_path),
        cfg=SimpleNamespace(
            build=BuildConfig(softmax_floor=setting, engines=engines), quantize=quantize
        ),
        teacher=SimpleNamespace(family="transformer"),
        profile=load_profile(target),
    )
    out = tmp_path / "out"
    out.mkdir()
    fp32, int8 = build._onnxruntime_engines(ctx, fusable_onnx, out)
    assert floors(out / int8["path"]) == floored
    assert ("masked-softmax floor on 2" in int8.get("optimization", "")) == bool(floored)
    # the FP32 graph: ORT's fused Attention (which the floor cannot reach) only without it
    ops = {n.op_type for n in onnx.load(str(out / fp32["path"])).graph.node}
    assert ("Attention" in ops) == (not setting)
    assert floors(out / fp32["path"]) == (2 if setting else 0)
    assert ("(attention unfused) + masked-softmax floor on 2" in fp32["optimization"]) == setting
