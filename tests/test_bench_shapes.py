"""`kdc bench --shape`: a text model's per-token inputs follow input_ids' shape unless given,
and the result line names the input shapes it timed."""

from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper
from typer.testing import CliRunner

from kdc.cli import app
from kdc.tools import synthetic_inputs

runner = CliRunner()


def _text_model(path, names=("input_ids", "attention_mask", "token_type_ids")):
    """Adds its int64 [batch, seq] inputs: ONNX Runtime fails unless their shapes agree."""
    nodes = [helper.make_node("Add", [names[0], names[1]], ["s0"])]
    for i, name in enumerate(names[2:], 1):
        nodes.append(helper.make_node("Add", [f"s{i - 1}", name], [f"s{i}"]))
    graph = helper.make_graph(
        nodes,
        "text",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in names],
        [helper.make_tensor_value_info(f"s{len(names) - 2}", TensorProto.INT64, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_token_inputs_follow_input_ids_unless_given(tmp_path):
    path = _text_model(tmp_path / "m.onnx")
    x = synthetic_inputs(path, shapes={"input_ids": [1, 16]})
    assert {k: v.shape for k, v in x.items()} == {
        "input_ids": (1, 16),
        "attention_mask": (1, 16),
        "token_type_ids": (1, 16),
    }
    x = synthetic_inputs(path, shapes={"attention_mask": [2, 8]})  # a sibling alone leads too
    assert {v.shape for v in x.values()} == {(2, 8)}
    x = synthetic_inputs(path, shapes={"input_ids": [1, 16], "token_type_ids": [1, 4]})
    assert x["attention_mask"].shape == (1, 16) and x["token_type_ids"].shape == (1, 4)


def test_bench_times_the_followed_shapes_and_says_so(tmp_path, capfd):
    path = _text_model(tmp_path / "m.onnx")
    args = ["bench", str(path), "--shape", "input_ids:1x16", "--iterations", "3"]
    res = runner.invoke(app, [*args, "--warmup", "1", "--min-duration", "0"])
    assert res.exit_code == 0, res.output
    assert "inputs input_ids:1x16, attention_mask:1x16, token_type_ids:1x16" in res.output
    bad = runner.invoke(app, [*args, "--shape", "attention_mask:1x8", "--min-duration", "0"])
    assert bad.exit_code == 2 and "input_ids:1x16, attention_mask:1x8" in bad.output
    assert "onnxruntime" not in capfd.readouterr().err  # kdc's one line, not ONNX Runtime's log


def test_bench_batch_follows_the_shapes_unless_given(tmp_path):
    """`--shape input_ids:4x16` timed batch 4 (it timed 1×16: --batch defaulted to 1)."""
    path = _text_model(tmp_path / "m.onnx")
    args = ["bench", str(path), "--iterations", "3", "--warmup", "1", "--min-duration", "0"]
    res = runner.invoke(app, [*args, "--shape", "input_ids:4x16"])
    assert res.exit_code == 0, res.output
    assert "batch 4" in res.output and "input_ids:4x16, attention_mask:4x16" in res.output
    mixed = runner.invoke(
        app, [*args, "--shape", "input_ids:4x16", "--shape", "attention_mask:2x16"]
    )
    assert mixed.exit_code == 2 and "different batch sizes [2, 4]" in mixed.output
    given = runner.invoke(app, [*args, "--shape", "input_ids:4x16", "--batch", "2"])
    assert given.exit_code == 0 and "batch 2" in given.output, given.output


def test_bench_says_the_precision_of_the_graph(tmp_path):
    """A quantized graph is timed and labelled int8, as `kdc estimate` labels it (it said fp32)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [x], [y], initializer=[scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "q.onnx"))
    for path, want in ((tmp_path / "q.onnx", "int8"), (_text_model(tmp_path / "f.onnx"), "fp32")):
        args = ["bench", str(path), "--iterations", "3", "--warmup", "1", "--min-duration", "0"]
        res = runner.invoke(app, [*args, "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["precision"] == want


def test_a_batch_the_model_refuses_is_named_as_fed(tmp_path):
    """--batch 4 on a graph whose batch is fixed at 1: ONNX Runtime refused the 4 rows kdc fed,
    but the error named the declared shapes (x:1x64), which the model accepts."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = runner.invoke(app, ["bench", str(tmp_path / "m.onnx"), "--batch", "4"])
    assert result.exit_code == 2
    assert "cannot run the model on x:4x64" in " ".join(result.output.split())
