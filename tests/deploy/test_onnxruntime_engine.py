"""The ONNX Runtime engine: sessions, batching, optimization, INT8 quantization, bad files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from kdc.deploy.onnxruntime import (
    count_ops,
    make_session,
    optimize,
    quantize_dynamic_int8,
    quantize_int8,
    run_session,
    session_options_record,
    weight_granularity,
)
from kdc.errors import UserError

FUSED = {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"}


def _export(
    module: nn.Module, args: tuple, names: list[str], path: Path, sequence: bool = False
) -> Path:
    axes = {n: {0: "batch"} for n in [*names, "logits"]}
    if sequence:  # a dynamic sequence axis on the text inputs
        axes.update({n: {0: "batch", 1: "sequence"} for n in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
        )
    return path


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ort")


@pytest.fixture(scope="module")
def mlp(tmp: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 5))
    return _export(net, (torch.randn(2, 16),), ["x"], tmp / "mlp.onnx")


@pytest.fixture(scope="module")
def cnn(tmp: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    return _export(net, (torch.randn(2, 3, 16, 16),), ["pixel_values"], tmp / "cnn.onnx")


def _tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(cfg)

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits()


def _export_bert(path: Path, sequence: bool = False) -> Path:
    ids = torch.randint(0, 100, (2, 16))
    args = (ids, torch.ones_like(ids))
    path = _export(_tiny_bert(), args, ["input_ids", "attention_mask"], path, sequence)
    onnx.checker.check_model(str(path))
    return path


@pytest.fixture(scope="module")
def bert(tmp: Path) -> Path:
    return _export_bert(tmp / "bert.onnx")


@pytest.fixture(scope="module")
def bert_dynamic(tmp: Path) -> Path:
    return _export_bert(tmp / "bert_dynamic.onnx", sequence=True)


def _x(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def _text(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, 16), np.int64)
    mask[: n // 2, 10:] = 0
    return {"input_ids": rng.integers(0, 100, (n, 16)), "attention_mask": mask}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def _activation_zero_point_types(path: Path) -> set[int]:
    """Element types of the zero points of QuantizeLinear nodes (activations; weights are stored
    already quantized behind DequantizeLinear only)."""
    model = onnx.load(str(path))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return {inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_session_threads_providers_and_record(mlp: Path) -> None:
    sess = make_session(mlp, threads=1, providers=["NoSuchExecutionProvider"])
    rec = session_options_record(sess)
    assert rec["providers"] == ["CPUExecutionProvider"]
    assert rec["intra_op_threads"] == 1 and rec["inter_op_threads"] == 1
    assert rec["execution_mode"] == "ORT_SEQUENTIAL"
    assert rec["graph_optimization_level"] == "ORT_ENABLE_ALL"
    basic = make_session(mlp, threads=1, optimization="basic")
    assert session_options_record(basic)["graph_optimization_level"] == "ORT_ENABLE_BASIC"
    with pytest.raises(UserError, match="optimization"):
        make_session(mlp, optimization="max")


def test_run_session_batches_and_feeds_declared_inputs(mlp: Path) -> None:
    sess = make_session(mlp, threads=1)
    inputs = _x(10, 1)
    whole = sess.run(None, inputs)[0]
    out = run_session(sess, {**inputs, "attention_mask": np.ones((10, 4))}, batch_size=3)
    assert out.shape == (10, 5)
    np.testing.assert_allclose(out, whole, rtol=1e-6, atol=1e-6)
    # float64 rows are cast to the declared float32
    np.testing.assert_allclose(
        run_session(sess, {"x": inputs["x"].astype(np.float64)}), whole, rtol=1e-6, atol=1e-6
    )


class _Recording:
    """A session that records the widths of the batches it is fed."""

    def __init__(self, session) -> None:
        self.session, self.widths = session, []

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def run(self, names, feed):
        self.widths.append(feed["attention_mask"].shape[1])
        return self.session.run(names, feed)


@pytest.mark.parametrize("dynamic, cut", [(True, True), (False, False)])
def test_run_session_cuts_text_batches_by_length(
    bert: Path, bert_dynamic: Path, dynamic: bool, cut: bool
) -> None:
    """Rows run longest first, each batch at its longest row's width where the graph's sequence
    axis is dynamic; outputs come back in input order, equal to the whole padded batch's."""
    rng = np.random.default_rng(0)
    lengths = np.array([3, 16, 5, 9, 2, 12, 7])
    mask = (np.arange(16) < lengths[:, None]).astype(np.int64)
    inputs = {"input_ids": rng.integers(0, 100, (7, 16)), "attention_mask": mask}
    session = make_session(bert_dynamic if dynamic else bert, threads=1)
    whole = session.run(None, inputs)[0]
    recording = _Recording(session)
    out = run_session(recording, inputs, batch_size=3)
    np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5)
    assert recording.widths == ([16, 7, 2] if cut else [16, 16, 16])


def test_run_session_keeps_per_token_outputs_whole(tmp: Path) -> None:
    """An output with a sequence axis (per-token scores) is not cut: rows keep the full width."""

    class PerToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.lin = nn.Embedding(100, 8), nn.Linear(8, 1)

        def forward(self, input_ids, attention_mask):
            return self.lin(self.emb(input_ids)).squeeze(-1) * attention_mask

    ids = torch.randint(0, 100, (2, 16))
    path = _export(
        PerToken(),
        (ids, torch.ones_like(ids)),
        ["input_ids", "attention_mask"],
        tmp / "per_token.onnx",
        sequence=True,
    )
    mask = (np.arange(16) < np.array([16, 3, 5, 2])[:, None]).astype(np.int64)
    ids = np.random.default_rng(0).integers(0, 100, (4, 16))
    inputs = {"input_ids": ids, "attention_mask": mask}
    session = make_session(path, threads=1)
    out = run_session(session, inputs, batch_size=2)
    np.testing.assert_allclose(out, session.run(None, inputs)[0], rtol=1e-6, atol=1e-6)


def test_run_session_missing_input_is_user_error(mlp: Path) -> None:
    with pytest.raises(UserError, match="'x'"):
        run_session(make_session(mlp, threads=1), {"pixel_values": np.zeros((2, 16))})


@pytest.mark.parametrize(
    "symmetric, zp_type", [(True, onnx.TensorProto.INT8), (False, onnx.TensorProto.UINT8)]
)
def test_quantize_int8_static_qdq(mlp: Path, tmp: Path, symmetric: bool, zp_type: int) -> None:
    dst = tmp / f"mlp-int8-{symmetric}.onnx"
    calib = [_x(32, seed) for seed in range(8)]
    assert quantize_int8(mlp, dst, calib, symmetric_activations=symmetric) == dst
    ops = count_ops(dst)
    assert ops["QuantizeLinear"] >= 2 and ops["DequantizeLinear"] >= 2
    assert _activation_zero_point_types(dst) == {zp_type}
    assert not list(tmp.glob(".mlp-int8*.tmp"))  # the temp file was renamed
    data = _x(500, 99)
    ref = run_session(make_session(mlp, threads=1), data)
    got = run_session(make_session(dst, threads=1), data)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert _cosine(ref, got) > 0.98


def test_reduce_range_quantizes_weights_to_7_bits(mlp: Path, tmp: Path) -> None:
    """ONNX Runtime's fix for x86 int8 kernels without VNNI: weights within ±64, not ±127."""
    from onnx import numpy_helper

    calib = [_x(32, seed) for seed in range(8)]
    for reduce, top in ((False, 127), (True, 64)):
        dst = quantize_int8(
            mlp, tmp / f"rr{reduce}.onnx", calib, symmetric_activations=False, reduce_range=reduce
        )
        weights = [
            numpy_helper.to_array(t)
            for t in onnx.load(str(dst)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2
        ]
        assert weights and max(int(abs(w.astype(int)).max()) for w in weights) == top


def test_weight_granularity_is_read_from_the_graph(mlp: Path, tmp: Path) -> None:
    """The build record's "weights" says how the shipped graph's weights are scaled (it said
    per-channel whenever ONNX Runtime's quantizer was among those tried)."""
    calib = [_x(32, seed) for seed in range(8)]
    per_channel = quantize_int8(mlp, tmp / "pc.onnx", calib, symmetric_activations=True)
    per_tensor = quantize_int8(
        mlp, tmp / "pt.onnx", calib, symmetric_activations=True, per_channel=False
    )
    assert weight_granularity(onnx.load(str(per_channel))) == "int8 per-channel"
    assert weight_granularity(onnx.load(str(per_tensor))) == "int8 per-tensor"
    assert weight_granularity(onnx.load(str(mlp))) == "no int8 weights"  # the float graph


def test_int8_saturates_on_x86_without_vnni_only() -> None:
    from kdc.cpu_flags import int8_saturates

    assert int8_saturates({"sse4_1", "avx2", "fma"})  # this project's AMD EPYC
    assert not int8_saturates({"avx2", "avx512bw", "avx512_vnni"})
    assert not int8_saturates({"asimd"}) and not int8_saturates({"asimd", "asimddp"})


def test_the_int8_kernel_advice_fits_how_the_graph_was_quantized(monkeypatch) -> None:
    import kdc.profiles
    from kdc.stages import verify

    monkeypatch.setattr(kdc.profiles, "cpu_info", lambda: ("AMD EPYC", {"avx2"}))
    advice = verify._int8_kernel_advice
    sym = {"activations": "int8 symmetric", "weights": "int8 per-channel"}
    asym = {"activations": "uint8 asymmetric", "weights": "int8 per-channel"}
    seven = {**asym, "reduce_range": True}
    qat = {"method": "qat", "activations": "uint8 asymmetric"}
    assert "quantize.symmetric_activations: false" in advice(sym)
    stored = {**sym, "activations": "symmetric, stored uint8 at zero point 128"}  # a CPU CNN's
    assert "quantize.symmetric_activations: false" in advice(stored)
    assert "quantize.reduce_range: true" in advice(asym)  # it said "use asymmetric" here
    assert "quantize.precision: fp32" in advice(seven) and "VNNI" in advice(seven)
    # QAT trains 7-bit weights too: not "switch to PTQ" any more
    assert "quantize.reduce_range: true" in advice(qat) and "method" not in advice(qat)
    assert "quantize.precision: fp32" in advice({**qat, "reduce_range": True})
    monkeypatch.setattr(kdc.profiles, "cpu_info", lambda: ("Xeon", {"avx2", "avx512_vnni"}))
    assert "VNNI" not in advice(asym) and "quantize.max_int8_loss" in advice(asym)


def test_quantize_int8_relative_paths(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "m.onnx").write_bytes(mlp.read_bytes())
    dst = quantize_int8(
        Path("in/m.onnx"), Path("out.onnx"), [_x(8, 0)], symmetric_activations=False
    )
    assert dst == Path("out.onnx") and count_ops(tmp_path / "out.onnx")["QuantizeLinear"] >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.onnx"]


def test_quantize_int8_entropy_and_bad_method(mlp: Path, tmp: Path) -> None:
    dst = quantize_int8(
        mlp,
        tmp / "mlp-entropy.onnx",
        [_x(32, s) for s in range(4)],
        symmetric_activations=True,
        method="entropy",
        per_channel=False,
    )
    assert count_ops(dst)["QuantizeLinear"] >= 2
    with pytest.raises(UserError, match="method"):
        quantize_int8(mlp, tmp / "never.onnx", [_x(4, 0)], symmetric_activations=True, method="kl")
    with pytest.raises(UserError, match="calibration"):
        quantize_int8(mlp, tmp / "never.onnx", [], symmetric_activations=True)
    assert not (tmp / "never.onnx").exists()


def test_quantize_dynamic_int8(mlp: Path, tmp: Path) -> None:
    dst = quantize_dynamic_int8(mlp, tmp / "mlp-dyn.onnx")
    ops = count_ops(dst)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & set(ops)
    data = _x(200, 5)
    ref = run_session(make_session(mlp, threads=1), data)
    assert _cosine(ref, run_session(make_session(dst, threads=1), data)) > 0.98


def test_optimize_transformer_fuses_and_keeps_outputs(bert: Path, tmp: Path) -> None:
    dst = optimize(bert, tmp / "bert-opt.onnx", family="transformer", num_heads=2, hidden_size=32)
    before, after = count_ops(bert), count_ops(dst)
    assert sum(after.values()) < sum(before.values())
    assert FUSED & set(after)
    assert "Attention" in after
    data = _text(6, 3)
    ref = run_session(make_session(bert, threads=1, optimization="disable"), data)
    got = run_session(make_session(dst, threads=1), data, batch_size=4)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_optimize_transformer_keeps_the_graph_where_fusion_fails(
    bert: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ORT's fusion scripts failing at both levels leave the exported graph, with a warning, not
    a traceback out of build."""
    import onnxruntime.transformers.optimizer as ort_optimizer

    def fail(*args, **kwargs):
        raise AssertionError("unusual graph")

    monkeypatch.setattr(ort_optimizer, "optimize_model", fail)
    with caplog.at_level("WARNING"):
        dst = optimize(bert, tmp / "kept.onnx", family="transformer")
    assert count_ops(dst) == count_ops(bert)
    assert "opt_level 1 failed too (unusual graph)" in caplog.text


def test_quantize_int8_transformer_symmetric(bert: Path, tmp: Path) -> None:
    dst = quantize_int8(
        bert, tmp / "bert-int8.onnx", [_text(8, s) for s in range(4)], symmetric_activations=True
    )
    assert count_ops(dst)["QuantizeLinear"] > 0
    assert _activation_zero_point_types(dst) == {onnx.TensorProto.INT8}
    data = _text(16, 7)
    ref = run_session(make_session(bert, threads=1), data)
    assert _cosine(ref, run_session(make_session(dst, threads=1), data)) > 0.9


def test_optimize_cnn_offline(cnn: Path, tmp: Path) -> None:
    dst = optimize(cnn, tmp / "cnn-opt.onnx", family="cnn")
    assert sum(count_ops(dst).values()) < sum(count_ops(cnn).values())
    data = {
        "pixel_values": np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    }
    ref = run_session(make_session(cnn, threads=1, optimization="disable"), data)
    np.testing.assert_allclose(run_session(make_session(dst, threads=1), data), ref, atol=1e-5)
    with pytest.raises(UserError, match="family"):
        optimize(cnn, tmp / "never.onnx", family="rnn")


def test_corrupt_or_missing_file_is_user_error(tmp: Path) -> None:
    bad = tmp / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf \xff\xff")
    calls = [
        lambda: make_session(bad),
        lambda: count_ops(bad),
        lambda: optimize(bad, tmp / "o.onnx", family="cnn"),
        lambda: quantize_int8(bad, tmp / "q.onnx", [_x(2, 0)], symmetric_activations=False),
        lambda: quantize_dynamic_int8(bad, tmp / "d.onnx"),
    ]
    for call in calls:
        with pytest.raises(UserError, match="corrupt.onnx"):
            call()
    with pytest.raises(UserError, match="not found"):
        make_session(tmp / "missing.onnx")
    assert not any((tmp / n).exists() for n in ("o.onnx", "q.onnx", "d.onnx"))


def test_kdc_export_keeps_attention_fusable(tmp_path: Path) -> None:
    """The export stage's transformer export (unslimmed) lets ORT's optimizer fuse Attention;
    onnxslim's rewrite of the mask path would prevent it."""
    from tiny import run_onnx, tiny_bert

    from kdc.deploy.softmax_floor import floor_file
    from kdc.export.onnx_export import export_onnx
    from kdc.models.hf import HFTextAdapter
    from kdc.stages.export import SIMPLIFY

    model, tok = tiny_bert(tmp_path, layers=2)
    adapter = HFTextAdapter(model.eval(), tok, max_length=16)
    example = adapter.encode(["good", "bad plot"])
    simplify = SIMPLIFY["transformer"]
    src = export_onnx(adapter, example, tmp_path / "m.onnx", simplify=simplify)
    dst = optimize(src, tmp_path / "opt.onnx", family="transformer", num_heads=2, hidden_size=32)
    assert count_ops(dst).get("Attention") == 2
    # left unfused for the masked-softmax floor (build.softmax_floor), the rest still fused
    kept = optimize(src, tmp_path / "u.onnx", family="transformer", fuse_masked_attention=False)
    assert "Attention" not in count_ops(kept) and count_ops(kept).get("SkipLayerNormalization")
    assert floor_file(kept) == 2
    feed = {
        k: v for k, v in example.items() if k in {i.name for i in onnx.load(str(src)).graph.input}
    }
    np.testing.assert_allclose(run_onnx(kept, feed), run_onnx(dst, feed), atol=1e-5)


def _dequantized_types(path: Path) -> set[int]:
    model = onnx.load(str(path))
    inits = {t.name: t.data_type for t in model.graph.initializer}
    return {
        inits[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }


def test_quantize_int8_float_bias_for_tensorrt(cnn: Path, tmp: Path) -> None:
    """ONNX Runtime's default int32 biases (behind DequantizeLinear) fail TensorRT's parser;
    `float_bias` keeps them float, so only int8 is dequantized, at the same accuracy."""
    calib = [
        {"pixel_values": np.random.default_rng(s).normal(size=(4, 3, 16, 16)).astype(np.float32)}
        for s in range(4)
    ]
    default = quantize_int8(cnn, tmp / "cnn-bias-int32.onnx", calib, symmetric_activations=True)
    assert onnx.TensorProto.INT32 in _dequantized_types(default)
    trt = quantize_int8(
        cnn, tmp / "cnn-bias-float.onnx", calib, symmetric_activations=True, float_bias=True
    )
    assert _dequantized_types(trt) == {onnx.TensorProto.INT8}
    x = calib[0]
    ref = run_session(make_session(default, threads=1, optimization="disable"), x)
    got = run_session(make_session(trt, threads=1, optimization="disable"), x)
    assert _cosine(ref, got) > 0.999


def _scaled_scores(scale_first: bool, axis: int = -1) -> onnx.ModelProto:
    """Two attention-score blocks `MatMul → Mul(c) → Softmax(axis)` sharing one scale constant
    (as torch.onnx shares equal constants between layers), `c` first or second in the Mul."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    for i in range(2):
        src = "x" if i == 0 else "p0"
        scaled = ["c", f"s{i}"] if scale_first else [f"s{i}", "c"]
        nodes += [
            helper.make_node("MatMul", [src, "w"], [f"s{i}"]),
            helper.make_node("Mul", scaled, [f"m{i}"]),
            helper.make_node("Softmax", [f"m{i}"], [f"p{i}"], axis=axis),
        ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("p1", TensorProto.FLOAT, [1, 2, 4, 4])
    inits = [
        numpy_helper.from_array(np.float32(0.25), "c"),
        numpy_helper.from_array(np.eye(4, dtype=np.float32) * 3, "w"),
    ]
    graph = helper.make_graph(nodes, "scores", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_proto(model: onnx.ModelProto, x: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, x)[0]


@pytest.mark.parametrize("scale_first", [False, True])
def test_scores_divided_once_per_shared_scale(scale_first: bool) -> None:
    """Each Mul(c) before a Softmax becomes Div(scores, 1/c), whichever side c is on; a scale
    shared by layers gets one reciprocal (a name repeated per layer made the graph invalid)."""
    from kdc.deploy.onnxruntime import _scores_divided

    model = _scaled_scores(scale_first)
    x = {"x": np.random.default_rng(0).random((1, 2, 4, 4), dtype=np.float32)}
    ref = _run_proto(model, x)
    assert _scores_divided(model)
    onnx.checker.check_model(model, full_check=True)
    divs = [n for n in model.graph.node if n.op_type == "Div"]
    assert [list(n.input) for n in divs] == [["s0", "c_reciprocal"], ["s1", "c_reciprocal"]]
    assert "c" not in {i.name for i in model.graph.initializer}  # unread: ORT would warn of it
    assert np.allclose(_run_proto(model, x), ref, atol=1e-6)


def test_scores_divided_leaves_softmax_over_other_axes() -> None:
    from kdc.deploy.onnxruntime import _scores_divided

    model = _scaled_scores(False, axis=1)
    assert not _scores_divided(model)
    assert "Div" not in {n.op_type for n in model.graph.node}
