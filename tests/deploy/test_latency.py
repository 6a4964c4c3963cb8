"""The measurement protocol: stats, warnings, the measured latency object."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdc.deploy import latency
from kdc.deploy.latency import (
    measure_callable,
    measure_onnx,
    throughput,
)
from kdc.errors import UserError

FAST = {"warmup": 3, "warmup_s": 0.0, "min_duration_s": 0.0}


@pytest.fixture(scope="module")
def linear_onnx(tmp_path_factory) -> str:
    """x (B×8 float) -> Relu(x W + b) (B×4), dynamic batch."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("lat") / "linear.onnx"
    onnx.save(model, path)
    return str(path)


def test_measure_callable_stats_are_ordered_and_counted() -> None:
    calls = []
    stats = measure_callable(lambda: calls.append(1), iterations=40, **FAST)
    assert stats["iterations"] == 40
    assert stats["warmup"] == 3
    assert len(calls) == 43
    assert 0 <= stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert stats["p99_ms"] <= stats["max_ms"]
    assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]
    assert stats["cv"] == pytest.approx(stats["std_ms"] / stats["mean_ms"])


def test_measure_callable_keeps_going_until_min_duration() -> None:
    stats = measure_callable(
        lambda: time.sleep(0.001), iterations=2, warmup=0, warmup_s=0.0, min_duration_s=0.05
    )
    assert stats["iterations"] > 2
    assert stats["duration_s"] >= 0.05


def test_measure_callable_stops_at_max_duration_and_says_so() -> None:
    stats = measure_callable(
        lambda: time.sleep(0.002),
        iterations=10_000,
        warmup=0,
        warmup_s=0.0,
        min_duration_s=0.0,
        max_duration_s=0.05,
    )
    assert 1 <= stats["iterations"] < 10_000
    assert any("max_duration_s" in w for w in stats["warnings"])
    # recorded, so a p99 of too few runs can name the limit (constraints._too_few_runs)
    assert stats["max_duration_s"] == 0.05 and stats["duration_s"] >= 0.05


def test_cv_warning_on_jittery_callable() -> None:
    state = {"i": 0}

    def jittery() -> None:
        state["i"] += 1
        time.sleep(0.004 if state["i"] % 2 else 0.0)

    stats = measure_callable(jittery, iterations=20, **FAST)
    assert stats["cv"] > latency.CV_LIMIT
    assert any("coefficient of variation" in w and "> 2.5%" in w for w in stats["warnings"])


def test_throttle_warning_when_latency_rises() -> None:
    state = {"i": 0}

    def slowing() -> None:
        state["i"] += 1
        time.sleep(0.004 if state["i"] > 30 else 0.0)

    stats = measure_callable(slowing, iterations=40, warmup=0, warmup_s=0.0, min_duration_s=0.0)
    assert any("throttled" in w for w in stats["warnings"])


def test_bad_iterations_is_user_error() -> None:
    with pytest.raises(UserError, match="iterations"):
        measure_callable(lambda: None, iterations=0)


def test_measure_onnx_returns_measured_latency_object(linear_onnx: str) -> None:
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    lat = measure_onnx(
        linear_onnx,
        {"x": x, "unused": x},
        threads=1,
        iterations=25,
        batch=5,
        precision="fp32",
        **FAST,
    )
    assert lat["kind"] == "measured"
    assert lat["engine"] == "onnxruntime"
    assert lat["provider"] == "CPUExecutionProvider"
    assert lat["threads"] == 1
    assert lat["device"].endswith("(1 thread)")
    assert lat["batch"] == 5
    assert lat["input_shape"] == {"x": [5, 8]}  # rows repeated up to the batch; extras not fed
    assert lat["iterations"] == 25 and lat["warmup"] == 3
    assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    for key in ("precision", "mean_ms", "cv", "warnings"):
        assert key in lat


def test_more_threads_than_cpus_is_warned(linear_onnx: str, monkeypatch) -> None:
    import kdc.deploy.latency

    x = np.zeros((1, 8), np.float32)
    monkeypatch.setattr(kdc.deploy.latency, "host_threads", lambda: 1)
    lat = measure_onnx(linear_onnx, {"x": x}, threads=2, iterations=5, **FAST)
    assert "2 intra-op threads on 1 CPUs: the threads contend" in " ".join(lat["warnings"])
    lat = measure_onnx(linear_onnx, {"x": x}, threads=1, iterations=5, **FAST)
    assert not any("intra-op" in w for w in lat["warnings"])


def test_measure_onnx_rejects_empty_inputs(linear_onnx: str) -> None:
    with pytest.raises(UserError, match="no rows"):
        measure_onnx(linear_onnx, {"x": np.zeros((0, 8), np.float32)}, threads=1, **FAST)


def test_throughput_is_batch_over_mean(linear_onnx: str) -> None:
    x = np.ones((40, 8), np.float32)
    res = throughput(linear_onnx, {"x": x}, batch=32, threads=1, iterations=5, min_duration_s=0.0)
    assert res["kind"] == "measured" and res["batch"] == 32
    assert res["input_shape"] == {"x": [32, 8]}
    assert res["items_per_s"] == pytest.approx(32 / (res["mean_ms"] / 1e3))


def test_interleaved_rounds_keep_each_models_median_round(tmp_path, monkeypatch):
    """Models are timed in alternating order each round; each keeps its median-p50 round."""
    from kdc.deploy import latency as L

    calls, p50s = [], {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}

    def fake(path, inputs, *, precision, **kw):
        calls.append(path)
        p50 = next(p50s[path])
        return {"kind": "measured", "p50_ms": p50, "p99_ms": 2 * p50, "precision": precision}

    monkeypatch.setattr(L, "measure_onnx", fake)
    out = L.measure_onnx_rounds({"a": ("a", "fp32"), "b": ("b", "int8")}, {}, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert out["a"]["p50_ms"] == 2.0 and out["a"]["rounds_p50_ms"] == [3.0, 1.0, 2.0]
    assert out["a"]["rounds_p99_ms"] == [6.0, 2.0, 4.0]
    assert out["b"]["p50_ms"] == 5.0 and out["b"]["precision"] == "int8"
    assert "3 interleaved rounds" in out["b"]["protocol"]
    p50s["a"] = iter([7.0])
    single = L.measure_onnx_rounds({"a": ("a", "fp32")}, {}, rounds=1)
    assert "rounds_p50_ms" not in single["a"]


def test_an_even_number_of_rounds_keeps_and_names_the_lower_middle_round(monkeypatch):
    """Of 4 rounds no one round's p50 is the median: the faster middle one is kept (its p99 and
    cv belong to it) and the protocol says so instead of "median"."""
    from kdc.deploy import latency as L

    p50s = iter([4.0, 1.0, 3.0, 2.0])
    monkeypatch.setattr(
        L,
        "measure_onnx",
        lambda path, inputs, *, precision, **kw: (
            {"p50_ms": next(p50s)} | {"p99_ms": 1.0, "precision": precision}
        ),
    )
    out = L.measure_onnx_rounds({"a": ("a", "fp32")}, {}, rounds=4)["a"]
    assert out["p50_ms"] == 2.0
    assert out["protocol"] == "lower-middle p50 of 4 interleaved rounds"


def test_latency_inputs_are_verify_batch_rows_even_from_a_short_eval_split():
    """An eval split of 3 rows and verify.batch 5: latency was timed on 5 rows (repeated), but
    the memory probe ran the 3 rows as they were and recorded batch 3 ("at the verify batch"),
    and the padding was of those 3. Every figure now reads the same 5 rows."""
    from types import SimpleNamespace

    from kdc.pipeline import Context

    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    ctx = Context(
        cfg=SimpleNamespace(verify=SimpleNamespace(batch=5)), profile=None, run=None, console=None
    )
    ctx.encode = lambda split, rows=None: {"input_ids": mask * 7, "attention_mask": mask}
    x = ctx.latency_inputs()
    assert {k: v.shape for k, v in x.items()} == {"input_ids": (5, 4), "attention_mask": (5, 4)}
    assert x["attention_mask"][3:].tolist() == mask[:2].tolist()  # rows repeated in order
    assert ctx.latency_padding() == pytest.approx(1 - 13 / 20)


def test_host_and_device_timings_share_one_cv(monkeypatch):
    """A host timing's cv is population std / mean, as trtexec's and bench.sh's (it was the
    sample std, so the same times gave a larger cv here than on the device)."""
    from kdc.deploy.trtexec import latency_stats

    ticks = iter([0, 1_000_000, 0, 3_000_000])  # two calls: 1 ms and 3 ms
    clock = SimpleNamespace(perf_counter=time.perf_counter, perf_counter_ns=lambda: next(ticks))
    monkeypatch.setattr(latency, "time", clock)
    res = measure_callable(lambda: None, warmup=0, warmup_s=0, iterations=2, min_duration_s=0)
    assert res["std_ms"] == pytest.approx(1.0) and res["cv"] == pytest.approx(0.5)
    assert latency_stats([1.0, 3.0])["cv"] == pytest.approx(res["cv"])
