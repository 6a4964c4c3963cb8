"""Accuracy-aware INT8: sensitive layers kept in float until the INT8 outputs fit the budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny import bert_config, tiny_bert, write_yaml

from kdc.compress.int8_fallback import keep_sensitive_layers, layer_groups, layer_of, output_loss
from kdc.config import load_config
from kdc.deploy.onnxruntime import count_ops, make_session, quantize_int8, run_session
from kdc.export.onnx_export import export_onnx
from kdc.models.hf import HFTextAdapter
from kdc.rundir import read_json


def test_layer_of_exported_names():
    assert layer_of("/model/bert/encoder/layer.1/attention/self/query/MatMul") == (
        "/model/bert/encoder/layer.1"
    )
    assert layer_of("/model/classifier/Gemm") == "/model/classifier"
    assert layer_of("/features/features.3/conv/Conv") == "/features/features.3"
    assert layer_of("/stem/Conv") == "/stem"


def test_output_loss_by_task():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert output_loss("text-classification", ref, ref[::-1]) == 1.0
    assert output_loss("text-classification", ref, ref * 2) == 0.0
    assert output_loss("sentence-embedding", ref, ref) == pytest.approx(0.0, abs=1e-9)


def test_keeps_most_helpful_layers_until_within_budget(tmp_path):
    groups = {"a": ["a1"], "b": ["b1", "b2"], "c": ["c1"]}
    # loss of a graph: 0.1 per float-kept node's layer removed from the 0.3 of full INT8
    harm = {"a1": 0.02, "b1": 0.1, "b2": 0.1, "c1": 0.08}

    def quantize(exclude: list[str], path: Path) -> Path:
        path.write_text(",".join(exclude))
        return path

    def loss_of(path: Path) -> float:
        kept = set(filter(None, path.read_text().split(",")))
        return sum(v for k, v in harm.items() if k not in kept)

    full = quantize([], tmp_path / "all.onnx")
    start = (full, loss_of(full))
    best, rec = keep_sensitive_layers(*start, quantize, loss_of, groups, 0.05, tmp_path, 3)
    assert rec["int8_loss"] == pytest.approx(0.3)
    assert rec["kept_float"] == ["b", "c"] and rec["met"]
    assert best.read_text() == "b1,b2,c1"
    _, rec = keep_sensitive_layers(*start, quantize, loss_of, groups, 0.5, tmp_path, 3)
    assert rec["kept_float"] == [] and "sensitivity" not in rec
    _, rec = keep_sensitive_layers(*start, quantize, loss_of, groups, 0.0, tmp_path, 1)
    assert rec["kept_float"] == ["b"] and not rec["met"]


def test_excluded_layers_of_a_real_graph_stay_float(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model, tok = tiny_bert(tmp_path, layers=2)
    adapter = HFTextAdapter(model.eval(), tok, max_length=16)
    x = adapter.encode(["good great movie", "bad awful plot", "fine"] * 8)
    src = export_onnx(adapter, x, tmp_path / "m.onnx", simplify=False)
    groups = layer_groups(src, ["MatMul", "Gemm", "Gather"])
    layer0 = next(g for g in groups if g.endswith("layer.0"))
    ref = run_session(make_session(src, threads=1), x)

    def quantize(exclude: list[str], path: Path) -> Path:
        return quantize_int8(
            src,
            path,
            [x],
            symmetric_activations=False,
            op_types=["MatMul"],
            nodes_to_exclude=exclude,
        )

    def loss_of(path: Path) -> float:
        return float(np.abs(run_session(make_session(path, threads=1), x) - ref).max())

    all_int8 = quantize([], tmp_path / "all.onnx")
    best, rec = keep_sensitive_layers(
        all_int8, loss_of(all_int8), quantize, loss_of, groups, 0.0, tmp_path, 1
    )
    assert len(rec["kept_float"]) == 1 and rec["kept_float"][0] in rec["sensitivity"]
    full = count_ops(all_int8)["QuantizeLinear"]
    assert count_ops(best)["QuantizeLinear"] < full
    # no node of the float layer reads a DequantizeLinear output
    q = onnx.load(str(tmp_path / "keep-1.onnx"))
    dq_out = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    kept = set(groups[rec["kept_float"][0]])
    assert not [n.name for n in q.graph.node if n.name in kept and dq_out & set(n.input)]
    assert layer0 in groups
    assert not list(cwd.iterdir())  # ORT's shape-inference dump stayed in scratch


@pytest.mark.slow
def test_build_records_accuracy_aware_int8(bert_project, tmp_path):
    from kdc import api

    cfg = write_yaml(
        bert_project.parent / "aa.yaml",
        bert_config(name="aa", quantize={"max_int8_loss": 0.0, "fallback_max_layers": 1}),
    )
    api.compress(cfg, "host", tmp_path / "run", quiet=True)
    engines = read_json(tmp_path / "run" / "build" / "engines.json")
    how = next(e for e in engines if e["precision"] == "int8")["quantization"]
    rec = how["accuracy_aware"]
    assert rec["budget"] == 0.0 and "train rows" in how["loss"]["rows"]
    assert len(rec["kept_float"]) <= 1 and rec["final_loss"] <= rec["int8_loss"] + 1e-9


@pytest.mark.parametrize("symmetric", [True, False])
def test_nncf_ptq_writes_standard_qdq_and_excludes_nodes(tmp_path, symmetric, capsys):
    from kdc.compress.nncf_ptq import quantize_int8_nncf

    model, tok = tiny_bert(tmp_path, layers=2)
    adapter = HFTextAdapter(model.eval(), tok, max_length=16)
    x = adapter.encode(["good great movie", "bad awful plot", "fine"] * 8)
    src = export_onnx(adapter, x, tmp_path / "m.onnx", simplify=False)
    ops_only = ["MatMul", "Gemm", "Gather"]
    dst = quantize_int8_nncf(  # symmetric: TensorRT's graph
        src,
        tmp_path / "q.onnx",
        [x],
        symmetric_activations=symmetric,
        op_types=ops_only,
        tensorrt=symmetric,
    )
    assert "Statistics collection" not in capsys.readouterr().out  # NNCF's progress bars held
    ops = count_ops(dst)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert not {"FakeQuantize"} & set(ops)
    q = onnx.load(str(dst))
    dq_out = {o: n for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    readers = {n.op_type for n in q.graph.node if dq_out.keys() & set(n.input)}
    assert readers <= {*ops_only, "Transpose", "Reshape"}  # no quantized Add/Softmax/LayerNorm
    consts = {i.name for i in q.graph.initializer}
    table_dq = [
        n.name
        for n in q.graph.node
        if n.op_type == "Gather" and n.input[0] in dq_out and dq_out[n.input[0]].input[0] in consts
    ]
    assert bool(table_dq) == symmetric  # CPU graphs gather INT8 rows, then scale them
    if symmetric:  # TensorRT takes signed INT8 Q/DQ only, also after a Softmax (never < 0)
        zero_points = {i.name: i.data_type for i in q.graph.initializer}
        types = {zero_points[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear"}
        assert types == {onnx.TensorProto.INT8}
    ref = run_session(make_session(src, threads=1), x)
    got = run_session(make_session(dst, threads=1), x)
    assert output_loss("text-classification", ref, got) <= 0.25
    groups = layer_groups(src, ["MatMul"])
    layer1 = next(v for g, v in groups.items() if g.endswith("layer.1"))
    part = quantize_int8_nncf(
        src,
        tmp_path / "p.onnx",
        [x],
        symmetric_activations=symmetric,
        op_types=ops_only,
        nodes_to_exclude=layer1,
        tensorrt=symmetric,
    )
    assert count_ops(part)["QuantizeLinear"] < ops["QuantizeLinear"]


def test_gather_then_dequantize_keeps_values_and_leaves_other_tables(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from kdc.deploy.qdq import gather_then_dequantize

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (50, 8)).astype(np.int8), "t"),
        numpy_helper.from_array(rng.integers(-127, 128, (50, 8)).astype(np.int8), "t2"),
        numpy_helper.from_array(rng.uniform(0.01, 0.1, 50).astype(np.float32), "rows"),
        numpy_helper.from_array(np.zeros(50, np.int8), "zp"),
        numpy_helper.from_array(np.float32(0.05), "one"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["t", "rows", "zp"], ["tf"], "dq_rows", axis=0),
        helper.make_node("Gather", ["tf", "ids"], ["a"]),  # unnamed
        helper.make_node("DequantizeLinear", ["t2", "rows", "zp"], ["tf2"], "dq_shared", axis=0),
        helper.make_node("Gather", ["tf2", "ids"], ["c"], "gather_shared"),
        helper.make_node("DequantizeLinear", ["t", "one"], ["tfs"], "dq_tensor"),
        helper.make_node("Gather", ["tfs", "ids"], ["b"], "gather_tensor"),
        helper.make_node("DequantizeLinear", ["t2", "rows", "zp"], ["tfo"], "dq_output", axis=0),
        helper.make_node("Gather", ["tfo", "ids"], ["d"], "gather_output"),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 8]) for n in "abcd"]
    outs.append(helper.make_tensor_value_info("tfo", TensorProto.FLOAT, [50, 8]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])], outs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save(model, str(before))
    onnx.save(gather_then_dequantize(onnx.load(str(before))), str(after))
    ids = {"ids": np.array([[0, 7, -1], [3, 3, 1]], dtype=np.int64)}
    want = make_session(before, threads=1).run(None, ids)
    got = make_session(after, threads=1).run(None, ids)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)
    rewritten = onnx.load(str(after))
    names = [n.name for n in rewritten.graph.node]
    assert len(names) == len(set(names))
    assert not {"dq_rows", "dq_shared"} & set(names)
    assert {"dq_tensor", "dq_output"} <= set(names)  # per-tensor; read by a graph output
    assert [i.name for i in rewritten.graph.initializer].count("rows_rows") == 1  # shared


def test_signed_qdq_widens_unsigned_pairs_only(tmp_path):
    """A UINT8 Q/DQ pair with zero point 0 becomes INT8 at scale × 255/127 (same outputs to one
    INT8 step); a signed pair sharing its scale keeps the scale as it was (a copy is widened),
    and a Q/DQ without a zero point is left alone."""
    from onnx import TensorProto, helper, numpy_helper

    from kdc.deploy.qdq import signed_qdq

    inits = [
        numpy_helper.from_array(np.float32(0.01), "s"),
        numpy_helper.from_array(np.uint8(0), "zu"),
        numpy_helper.from_array(np.int8(0), "zs"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["p", "s", "zu"], ["pq"]),
        helper.make_node("DequantizeLinear", ["pq", "s", "zu"], ["a"]),
        helper.make_node("QuantizeLinear", ["x", "s", "zs"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zs"], ["b"]),
        helper.make_node("QuantizeLinear", ["p", "s"], ["pq2"]),  # UINT8, no zero point given
        helper.make_node("DequantizeLinear", ["pq2", "s"], ["c"]),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "pxabc"]
    graph = helper.make_graph(nodes, "g", vi[:2], vi[2:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save(model, str(before))
    onnx.save(signed_qdq(onnx.load(str(before))), str(after))
    q = onnx.load(str(after))
    onnx.checker.check_model(q, full_check=True)
    init = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    first, second = q.graph.node[0], q.graph.node[2]
    assert init["zu"].dtype == np.int8 and init[first.input[1]] == pytest.approx(0.01 * 255 / 127)
    assert first.input[1] != "s" and second.input[1] == "s" and init["s"] == np.float32(0.01)
    assert list(q.graph.node[4].input) == ["p", "s"]
    feed = {
        "p": np.array([0, 0.3, 1.2, 2.55], np.float32),
        "x": np.array([-1, -0.3, 0, 1.2], np.float32),
    }
    want = make_session(before, threads=1).run(None, feed)
    got = make_session(after, threads=1).run(None, feed)
    assert np.allclose(got[0], want[0], atol=0.01 * 255 / 127 / 2 + 1e-6)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.slow
def test_auto_ptq_records_both_backends(bert_project, tmp_path):
    from kdc import api

    cfg = write_yaml(
        bert_project.parent / "auto.yaml",
        bert_config(name="auto", quantize={"ptq": "auto", "calibration_size": 4096}),
    )  # more calibration rows asked for than the data has
    api.compress(cfg, "host", tmp_path / "run", quiet=True)
    engines = read_json(tmp_path / "run" / "build" / "engines.json")
    how = next(e for e in engines if e["precision"] == "int8")["quantization"]
    choice = how["backend_choice"]
    assert set(choice["loss"]) == set(choice["latency"]) == {"onnxruntime", "nncf"}  # host: timed
    assert how["method"] in ("ort-static-qdq", "nncf-ptq-qdq")
    assert "train rows" in how["loss"]["rows"]
    rows = read_json(tmp_path / "run" / "report.json")["data"]["train"]
    assert rows < load_config(cfg).quantize.calibration_size
    assert how["calibration_rows"] == rows  # what the data had, not what was asked for
    assert "the calibration rows too" in how["loss"]["rows"]  # none left to hold out


@pytest.mark.parametrize(
    ("measurable", "p50", "spread", "chosen"),
    [
        (True, {"nncf": 12.5, "onnxruntime": 7.1}, 0.02, "onnxruntime"),  # closest, 1.8x slower
        (True, {"nncf": 7.5, "onnxruntime": 7.1}, 0.02, "nncf"),  # within 10 %: the closest
        (True, {"nncf": 9.2, "onnxruntime": 7.1}, 0.2, "nncf"),  # 1.3x, within the rounds' spread
        (False, {"nncf": 12.5, "onnxruntime": 7.1}, 0.02, "nncf"),  # not timeable: the closest
    ],
)
def test_auto_ptq_skips_an_int8_graph_much_slower_than_the_other(
    monkeypatch, measurable, p50, spread, chosen
):
    from types import SimpleNamespace

    from kdc.deploy import latency
    from kdc.stages import build

    protocol = "median p50 of 3 interleaved rounds"
    timed = {  # three rounds, the kept (median) p50 in the middle, as measure_onnx_rounds gives
        b: {
            "p50_ms": ms,
            "rounds_p50_ms": [ms * (1 - spread / 2), ms, ms * (1 + spread / 2)],
            "threads": 2,  # what was timed, whatever verify.threads says
            "protocol": protocol,
        }
        for b, ms in p50.items()
    }
    monkeypatch.setattr(latency, "measure_onnx_rounds", lambda models, rows, **kw: timed)
    ctx = SimpleNamespace(
        profile=SimpleNamespace(
            measurable=measurable, runtime=SimpleNamespace(engines=["onnxruntime"])
        ),
        cfg=SimpleNamespace(verify=SimpleNamespace(threads=1), build=SimpleNamespace(engines=None)),
    )
    built = {"onnxruntime": Path("onnxruntime"), "nncf": Path("nncf")}
    losses = {"onnxruntime": 0.059, "nncf": 0.0}
    deviations = {"onnxruntime": 0.01, "nncf": 0.05}  # losses 15 rows apart: not a tie
    backend, choice = build._choose_backend(ctx, built, losses, deviations, {}, 1 / 256)
    assert backend == chosen
    assert choice.get("latency") == (timed if measurable else None)  # as timed, labelled


@pytest.mark.parametrize(
    ("target", "engines", "here"),
    [
        ("host", None, True),  # ONNX Runtime on this CPU ships the INT8 graph
        ("host", ["onnxruntime", "tensorrt"], True),  # TensorRT is unavailable on host
        ("jetson", None, False),  # TensorRT on the device
        ("jetson", ["onnxruntime"], False),  # ONNX Runtime, but on the device's CPU
    ],
)
def test_int8_graphs_are_compared_by_the_arithmetic_that_runs_them(target, engines, here):
    """Only the machine that runs the INT8 graph ranks graphs by its int8 kernels: this CPU's
    (which saturate on S8S8 without VNNI) would mislead a choice for TensorRT or another CPU."""
    from types import SimpleNamespace

    from kdc.profiles import load_profile
    from kdc.stages import build

    ctx = SimpleNamespace(
        profile=load_profile(target), cfg=SimpleNamespace(build=SimpleNamespace(engines=engines))
    )
    assert build.int8_runs_here(ctx) is here
