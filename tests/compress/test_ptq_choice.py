"""`quantize.ptq: auto`: which INT8 graph ships when both change the class of (nearly) as many
held-out rows: the one whose outputs deviate least from FP32's, whatever the backends' order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdc.compress.int8_fallback import output_deviation
from kdc.deploy.onnxruntime import make_session
from kdc.stages import build

ROWS = 300  # training rows: 8 calibrate, the next 256 are held out
WEIGHTS = np.eye(4, dtype=np.float32) * 4  # class = the largest feature, by a wide margin


def _linear(path: Path, weights: np.ndarray) -> Path:
    """A stand-in graph: logits = x @ weights."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _ctx() -> SimpleNamespace:
    x = np.eye(4, dtype=np.float32)[np.arange(ROWS) % 4] + 0.1
    quantize = SimpleNamespace(
        ptq="auto",
        calibration_size=8,
        calibration="minmax",
        max_int8_loss=None,
        symmetric_activations=False,
        reduce_range=False,
    )
    return SimpleNamespace(
        cfg=SimpleNamespace(
            task="image-classification", quantize=quantize, build=SimpleNamespace(engines=None)
        ),
        profile=SimpleNamespace(measurable=False, runtime=SimpleNamespace(engines=["onnxruntime"])),
        teacher=SimpleNamespace(family="cnn"),
        dataset=SimpleNamespace(train=x),
        encode=lambda split, n: {"x": x[:n]},
    )


@pytest.mark.parametrize("closer", ["onnxruntime", "nncf"])
@pytest.mark.parametrize("order", [("onnxruntime", "nncf"), ("nncf", "onnxruntime")])
def test_equal_class_loss_ships_the_graph_closer_to_fp32(monkeypatch, tmp_path, closer, order):
    """Neither stand-in INT8 graph changes a held-out row's class; the one whose logits stray
    less (weights off by 0.01, not 0.3) ships in either backend order, both deviations recorded."""
    noise = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    off = {b: 0.01 if b == closer else 0.3 for b in order}
    monkeypatch.setattr(build, "PTQ_BACKENDS", {b: build.PTQ_BACKENDS[b] for b in order})
    monkeypatch.setattr(
        build,
        "_quantizer",
        lambda ctx, src, b: lambda exclude, path: _linear(path, WEIGHTS + off[b] * noise),
    )
    src, dst = _linear(tmp_path / "fp32.onnx", WEIGHTS), tmp_path / "int8.onnx"
    how = build._ptq(_ctx(), src, dst)
    choice = how["backend_choice"]
    assert how["method"] == build.PTQ_BACKENDS[closer]
    assert choice["loss"] == {"onnxruntime": 0.0, "nncf": 0.0}
    other = next(b for b in order if b != closer)
    assert 0 < choice["deviation"][closer] < choice["deviation"][other]
    assert "lowest deviation" in choice["rule"] and "within 0.00390625 of it" in choice["rule"]
    shipped = make_session(dst, threads=1).run(None, {"x": np.eye(4, dtype=np.float32)})[0]
    np.testing.assert_allclose(shipped, WEIGHTS + off[closer] * noise, rtol=1e-6)


@pytest.mark.parametrize(
    ("losses", "tie", "chosen"),
    [
        ({"onnxruntime": 0.0, "nncf": 0.0}, 1 / 256, "nncf"),  # a tie: the lower deviation
        ({"onnxruntime": 0.0, "nncf": 1 / 256}, 1 / 256, "nncf"),  # one row apart: near-tie
        ({"onnxruntime": 0.0, "nncf": 2 / 256}, 1 / 256, "onnxruntime"),  # two rows: the loss
        ({"onnxruntime": 0.0010, "nncf": 0.0011}, 0.0, "onnxruntime"),  # 1 - cosine differs
        ({"onnxruntime": 0.0010, "nncf": 0.0010}, 0.0, "nncf"),  # equal 1 - cosine
    ],
)
@pytest.mark.parametrize("order", [("onnxruntime", "nncf"), ("nncf", "onnxruntime")])
def test_output_deviation_decides_only_near_ties(losses, tie, chosen, order):
    ctx = SimpleNamespace(
        profile=SimpleNamespace(measurable=False, runtime=SimpleNamespace(engines=["onnxruntime"])),
        cfg=SimpleNamespace(build=SimpleNamespace(engines=None)),
    )
    built = {b: Path(b) for b in order}
    deviations = {"onnxruntime": 0.04, "nncf": 0.01}
    backend, choice = build._choose_backend(
        ctx, built, {b: losses[b] for b in order}, deviations, {}, tie
    )
    assert backend == chosen
    assert choice["deviation"] == deviations


def test_output_deviation_is_relative_rms():
    ref = np.array([[3.0, -4.0], [0.0, 0.0]], np.float32)  # RMS 2.5
    assert output_deviation(ref, ref) == 0.0
    assert output_deviation(ref, ref + 0.5) == pytest.approx(0.2)
    assert output_deviation(ref * 10, ref * 10 + 5) == pytest.approx(0.2)  # scale-free


def test_auto_ptq_timings_are_labelled_latencies(tmp_path):
    """`ptq: auto`'s timings were a bare `p50_ms` per backend, with no device, engine, batch or
    threads (REPORT.md: every latency is a labelled object): each is a measured latency object,
    and no timing stands beside them."""
    ctx = SimpleNamespace(
        profile=SimpleNamespace(measurable=True, runtime=SimpleNamespace(engines=["onnxruntime"])),
        cfg=SimpleNamespace(verify=SimpleNamespace(threads=1), build=SimpleNamespace(engines=None)),
    )
    built = {b: _linear(tmp_path / f"{b}.onnx", WEIGHTS) for b in ("onnxruntime", "nncf")}
    losses, deviations = {b: 0.0 for b in built}, {b: 0.01 for b in built}
    rows = {"x": np.eye(4, dtype=np.float32)}
    _, choice = build._choose_backend(ctx, built, losses, deviations, rows, 0.0)
    assert set(choice["latency"]) == set(built)
    for lat in choice["latency"].values():
        assert lat["kind"] == "measured" and lat["engine"] == "onnxruntime" and lat["device"]
        assert (lat["precision"], lat["batch"], lat["threads"]) == ("int8", 1, 1)
        assert lat["p50_ms"] > 0 and lat["p99_ms"] >= lat["p50_ms"]
    assert not [k for k in choice if k.endswith("_ms") or k in ("threads", "protocol")]
