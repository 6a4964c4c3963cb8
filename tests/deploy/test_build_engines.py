"""Build stage engine records: a TensorRT engine asked for on a target without TensorRT (host)
is recorded `unavailable` with a reason, and every consumer of engine records tolerates it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from kdc.config import BuildConfig
from kdc.deploy.check import compare
from kdc.deploy.constraints import evaluate_constraints, shipped_engine
from kdc.deploy.report import console_summary, render_markdown
from kdc.deploy.report_plot import render_png
from kdc.errors import UserError
from kdc.profiles import load_profile
from kdc.rundir import RunDir, read_json
from kdc.stages import build, build_tensorrt
from kdc.stages.report import mark_shipped
from kdc.tracking import report_metrics

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"
REASON = (
    "target host runs onnxruntime only (its profile lists no tensorrt engine); "
    "use a TensorRT target such as jetson or t4"
)


def _ort(precision: str) -> dict:
    return {
        "engine": "onnxruntime",
        "provider": "CPUExecutionProvider",
        "precision": precision,
        "path": f"build/onnxruntime/model_{precision}.onnx",
        "status": "built",
    }


def _build(
    tmp_path, monkeypatch, target: str, engines: list[str] | None, precision: str
) -> list[dict]:
    """Run the build stage with the ONNX Runtime engines and the TensorRT builder faked."""
    (tmp_path / "export").mkdir(parents=True)
    (tmp_path / "export" / "model.onnx").write_bytes(b"x")
    built = [_ort("fp32"), *([_ort("int8")] if precision == "int8" else [])]
    monkeypatch.setattr(build, "build_onnxruntime", lambda ctx, src: list(built))
    monkeypatch.setattr(
        build,
        "build_tensorrt",
        lambda ctx, engines: {
            "engine": "tensorrt",
            "precision": build_tensorrt.tensorrt_precision(ctx, engines),
            "status": "bundle",
        },
    )
    ctx = SimpleNamespace(
        run=RunDir(tmp_path),
        cfg=SimpleNamespace(
            build=BuildConfig(engines=engines) if engines is not None else BuildConfig(),
            quantize=SimpleNamespace(precision=precision),
        ),
        profile=load_profile(target),
        log=lambda msg: None,
    )
    out = build.run(ctx)
    records = read_json(tmp_path / "build" / "engines.json")
    assert out.metrics == {"engines": len(records)}
    return records


@pytest.mark.parametrize(("precision", "trt_precision"), [("int8", "int8"), ("fp32", "fp16")])
def test_host_build_asking_for_tensorrt_records_it_unavailable(
    tmp_path, monkeypatch, precision, trt_precision
):
    records = _build(tmp_path, monkeypatch, "host", ["onnxruntime", "tensorrt"], precision)
    trt = [e for e in records if e["engine"] == "tensorrt"]
    assert trt == [
        {
            "engine": "tensorrt",
            "precision": trt_precision,
            "status": "unavailable",
            "reason": REASON,
        }
    ]
    assert records[-1]["engine"] == "tensorrt"  # after the ONNX Runtime engines


def test_tensorrt_only_on_host_takes_the_configured_precision(tmp_path, monkeypatch):
    records = _build(tmp_path, monkeypatch, "host", ["tensorrt"], "int8")
    assert records == [
        {"engine": "tensorrt", "precision": "int8", "status": "unavailable", "reason": REASON}
    ]


def test_no_tensorrt_record_unless_asked_by_name(tmp_path, monkeypatch):
    records = _build(tmp_path, monkeypatch, "host", ["onnxruntime"], "int8")
    assert {e["engine"] for e in records} == {"onnxruntime"}
    # the default list means "each engine the target runs": host builds ONNX Runtime only
    records = _build(tmp_path / "default", monkeypatch, "host", None, "int8")
    assert {e["engine"] for e in records} == {"onnxruntime"}
    records = _build(tmp_path / "jetson", monkeypatch, "jetson", None, "int8")
    assert [e["engine"] for e in records][-1] == "tensorrt"


def test_tensorrt_target_still_goes_to_the_tensorrt_builder(tmp_path, monkeypatch):
    records = _build(tmp_path, monkeypatch, "jetson", ["onnxruntime", "tensorrt"], "int8")
    assert records[-1] == {"engine": "tensorrt", "precision": "int8", "status": "bundle"}


def test_tensorrt_without_an_onnxruntime_engine_names_the_fix(tmp_path):
    ctx = SimpleNamespace(run=RunDir(tmp_path), cfg=SimpleNamespace(source_file="model.yaml"))
    with pytest.raises(UserError) as e:
        build_tensorrt.build_tensorrt(ctx, [])
    assert e.value.field == "build.engines" and "onnxruntime" in e.value.fix


def test_tensorrt_source_is_the_int8_graph_or_the_exported_one(tmp_path):
    """ONNX Runtime's optimised FP32 graph holds com.microsoft fused ops TensorRT cannot parse:
    an FP16 engine is built from the exported graph, an INT8 one from the Q/DQ graph."""
    ctx = SimpleNamespace(run=RunDir(tmp_path))
    fp32 = build_tensorrt.tensorrt_source(ctx, [_ort("fp32")])
    assert fp32 == {"path": "export/model.onnx", "precision": "fp32"}
    int8 = build_tensorrt.tensorrt_source(ctx, [_ort("fp32"), _ort("int8")])
    assert int8["path"].endswith("model_int8.onnx")
    assert build_tensorrt.tensorrt_source(ctx, []) is None


def test_tensorrt_engine_from_a_graph_lint_rejects_is_unavailable(tmp_path):
    """No bundle is shipped that would fail to parse on the device: the record says why."""
    (tmp_path / "export").mkdir()
    graph = helper.make_graph(
        [helper.make_node("FusedConv", ["x", "W"], ["logits"], domain="com.microsoft")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 4, 4])],
        [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "W")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), tmp_path / "export" / "model.onnx")
    ctx = SimpleNamespace(
        run=RunDir(tmp_path),
        profile=load_profile("jetson"),
        encode=lambda split, rows=None: {"x": np.zeros((2, 1, 4, 4), np.float32)},
        cfg=SimpleNamespace(verify=SimpleNamespace(batch=1)),
    )
    rec = build_tensorrt.build_tensorrt(ctx, [_ort("fp32")])
    assert rec["status"] == "unavailable" and "source" not in rec
    assert "cannot build export/model.onnx: com.microsoft::FusedConv" in rec["reason"]
    assert f"kdc lint {tmp_path}/export/model.onnx --target jetson-orin-nano-8gb" in rec["reason"]


@pytest.fixture
def host_report() -> dict:
    """The sample report as a host run: its ONNX Runtime engines, then TensorRT unavailable."""
    report = json.loads(SAMPLE.read_text())
    report["target"] = {"name": "host", "kind": "cpu", "measurable": True}
    ort = [e for e in report["engines"] if e["engine"] == "onnxruntime"]
    trt = {"engine": "tensorrt", "precision": "int8", "status": "unavailable", "reason": REASON}
    report["engines"] = [*ort, trt]
    return report


def test_unavailable_tensorrt_is_never_the_shipped_engine(host_report):
    engines = mark_shipped(copy.deepcopy(host_report["engines"]), "int8", ["onnxruntime"])
    assert [e["engine"] for e in engines if e.get("ships")] == ["onnxruntime"]
    assert "ships" not in engines[-1]
    host_report["engines"] = engines
    assert shipped_engine(host_report)["engine"] == "onnxruntime"
    limits = {
        "latency_budget_ms": 100.0,
        "max_accuracy_drop": 0.5,
        "max_memory_mb": 1e6,
        "max_size_mb": 1e3,
    }
    rows = evaluate_constraints(host_report, limits, {})
    assert len(rows) == 4
    assert all(r["pass"] and r["engine"] == "onnxruntime-int8" for r in rows), rows


def test_report_shows_the_unavailable_row_and_its_reason(host_report):
    md = render_markdown(host_report)
    assert "| tensorrt-int8 | unavailable | int8 | – | – | – | – | – | – | – |" in md
    assert f"- tensorrt-int8 is unavailable: {REASON}" in md
    console = Console(width=200, record=True)
    console.print(console_summary(host_report))
    text = console.export_text()
    assert "tensorrt-int8 [unavailable]" in text and "onnxruntime-int8 [built]" in text
    assert f"tensorrt-int8 is unavailable: {REASON}" in text
    assert "tensorrt-int8.size_mb" not in report_metrics(host_report)
    assert render_png(host_report).startswith(b"\x89PNG")  # no latency: not plotted, no crash


def test_check_against_a_baseline_without_the_record_compares_nothing_new(host_report):
    baseline = copy.deepcopy(host_report)
    baseline["engines"] = baseline["engines"][:-1]
    results = compare(host_report, baseline)
    assert results and not any(r.metric.startswith("tensorrt") for r in results)
    assert not any(r.failed for r in results)


@pytest.mark.parametrize(
    ("target", "flags", "asked", "seven_bit"),
    [
        ("host", {"avx2"}, None, True),  # this CPU's int8 kernels saturate: 7-bit weights
        ("host", {"avx2", "avx512_vnni"}, None, False),
        ("jetson", {"avx2"}, None, False),  # TensorRT runs the graph, not this CPU
        ("host", {"avx2"}, False, False),
        ("jetson", {"avx2"}, True, True),
    ],
)
def test_reduce_range_is_on_where_this_cpus_int8_kernels_run_the_graph_and_saturate(
    monkeypatch, target, flags, asked, seven_bit
):
    import kdc.profiles

    monkeypatch.setattr(kdc.profiles, "cpu_info", lambda: ("cpu", flags))
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(build=BuildConfig(), quantize=SimpleNamespace(reduce_range=asked)),
        profile=load_profile(target),
    )
    assert build.reduce_range(ctx) is seven_bit


def test_reduce_range_set_where_no_ptq_graph_is_made_is_noted(tmp_path):
    from tiny import cnn_config, write_yaml

    from kdc.config import load_config
    from kdc.preflight import config_warnings

    def notes(**quantize) -> str:
        cfg = cnn_config(weights=None, quantize={"reduce_range": True, **quantize})
        return " ".join(config_warnings(load_config(write_yaml(tmp_path / "m.yaml", cfg))))

    assert "no INT8 graph" in notes(precision="fp32")
    assert "reduce_range" not in notes() and "reduce_range" not in notes(method="qat")


@pytest.mark.parametrize(
    ("target", "flags", "asked", "seven_bit"),
    [
        ("host", {"avx2"}, None, True),  # QAT trains 7-bit weights where PTQ would make them
        ("host", {"avx2", "avx512_vnni"}, None, False),
        ("host", {"avx2"}, False, False),
        ("jetson", {"avx2"}, True, False),  # TensorRT: symmetric 8-bit, never 7
    ],
)
def test_a_qat_engine_records_its_7_bit_weights(
    monkeypatch, tmp_path, target, flags, asked, seven_bit
):
    from tiny import cnn_config, write_yaml

    import kdc.profiles
    from kdc.config import load_config
    from kdc.preflight import target_warnings

    profile = load_profile(target)  # host's is read once, of this machine's CPU
    monkeypatch.setattr(kdc.profiles, "cpu_info", lambda: ("cpu", flags))
    quantize = {"method": "qat", "reduce_range": asked}
    cfg = load_config(write_yaml(tmp_path / "m.yaml", cnn_config(weights=None, quantize=quantize)))
    ctx = SimpleNamespace(cfg=cfg, profile=profile, teacher=SimpleNamespace(family="cnn"))
    assert bool(build._qat_how(ctx).get("reduce_range")) is seven_bit
    noted = any("reduce_range not used" in n for n in target_warnings(cfg, ctx.profile))
    assert noted is (asked is True and target == "jetson")


@pytest.mark.parametrize("backend", ["onnxruntime", "nncf"])
def test_both_ptq_backends_get_reduce_range(monkeypatch, tmp_path, backend):
    import kdc.compress.nncf_ptq
    import kdc.deploy.onnxruntime
    import kdc.profiles

    seen = {}
    for module, name in (
        (kdc.deploy.onnxruntime, "quantize_int8"),
        (kdc.compress.nncf_ptq, "quantize_int8_nncf"),
    ):
        monkeypatch.setattr(module, name, lambda *a, **k: seen.update(k))
    monkeypatch.setattr(kdc.profiles, "cpu_info", lambda: ("AMD EPYC", {"avx2"}))
    q = SimpleNamespace(
        reduce_range=None, symmetric_activations=None, calibration_size=4, calibration="minmax"
    )
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(build=BuildConfig(), quantize=q),
        profile=load_profile("host"),
        teacher=SimpleNamespace(family="cnn"),
        encode=lambda split, rows=None: {"x": np.zeros((8, 2), np.float32)},
    )
    build._quantizer(ctx, tmp_path / "m.onnx", backend)([], tmp_path / "q.onnx")
    assert seen["reduce_range"] is True
    if backend == "nncf":  # a CPU target: conv output quantizers (`quantize_conv_outputs`)
        assert seen["tensorrt"] is False


@pytest.mark.parametrize(
    ("target", "engines", "tensorrt"),
    [
        ("host", None, False),
        ("host", ["onnxruntime", "tensorrt"], False),  # recorded unavailable
        ("jetson", None, True),
        ("jetson", ["tensorrt"], True),
        ("jetson", ["onnxruntime", "tensorrt"], True),  # TensorRT builds from the same graph
        ("jetson", ["onnxruntime"], False),
    ],
)
@pytest.mark.parametrize("backend", ["onnxruntime", "nncf"])
def test_the_int8_graph_is_quantized_for_the_engine_built_from_it(
    monkeypatch, tmp_path, backend, target, engines, tensorrt
):
    """TensorRT's scheme (symmetric activations, signed Q/DQ, float biases, no conv output
    quantizers) only where a TensorRT engine is built from the graph: a TensorRT target whose
    build.engines leaves TensorRT out ships ONNX Runtime's graph, quantized for ONNX Runtime
    (it got TensorRT's); so does its QAT, 7-bit weights where asked."""
    import kdc.compress.nncf_ptq
    import kdc.deploy.onnxruntime
    from kdc.preflight import qat_reduce_range

    seen = {}
    for module, name in (
        (kdc.deploy.onnxruntime, "quantize_int8"),
        (kdc.compress.nncf_ptq, "quantize_int8_nncf"),
    ):
        monkeypatch.setattr(module, name, lambda *a, **k: seen.update(k))
    q = SimpleNamespace(
        reduce_range=False, symmetric_activations=None, calibration_size=4, calibration="minmax"
    )
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(build=BuildConfig(engines=engines), quantize=q),
        profile=load_profile(target),
        teacher=SimpleNamespace(family="cnn"),
        encode=lambda split, rows=None: {"x": np.zeros((8, 2), np.float32)},
    )
    build._quantizer(ctx, tmp_path / "m.onnx", backend)([], tmp_path / "q.onnx")
    assert seen["symmetric_activations"] is tensorrt and build.for_tensorrt(ctx) is tensorrt
    if backend == "nncf":
        assert seen["tensorrt"] is tensorrt
    else:
        assert seen["float_bias"] is tensorrt and seen["unsigned"] is not tensorrt
    qat = SimpleNamespace(
        quantize=SimpleNamespace(precision="int8", method="qat", reduce_range=True),
        build=ctx.cfg.build,
        source_file="m.yaml",
    )
    assert qat_reduce_range(qat, ctx.profile) is not tensorrt


def test_an_fp32_student_on_a_tensorrt_target_ships_its_fp16_engine():
    """quantize.precision fp32 for a Jetson builds the TensorRT engine in FP16
    (`tensorrt_precision`); the ONNX Runtime FP32 engine, timed only on the build machine and
    predicted for no target, was marked as shipping instead, so the latency budget could never
    be judged (FAIL: measured only off the target). The FP16 TensorRT engine ships, and its
    prediction and stand-in accuracy answer the constraints."""
    ort = {
        "engine": "onnxruntime",
        "precision": "fp32",
        "status": "built",
        "accuracy": {"metric": "accuracy", "value": 0.9},
        "latency": {"kind": "measured", "device": "Xeon (2 threads)", "p50_ms": 9, "p99_ms": 12},
    }
    trt = {
        "engine": "tensorrt",
        "precision": "fp16",
        "status": "bundle",
        "accuracy": {
            "metric": "accuracy",
            "value": 0.9,
            "engine": "onnxruntime-cpu-fp32 (export/model.onnx)",
            "stand_in": "fp32-graph",
        },
        "latency": {"kind": "predicted", "model": "roofline-v1", "p50_ms": 2.0},
    }
    engines = mark_shipped([ort, trt], "fp32", ["tensorrt", "onnxruntime"])
    assert [e["engine"] for e in engines if e.get("ships")] == ["tensorrt"]
    report = {
        "target": {"name": "jetson-orin-nano-8gb", "measurable": False},
        "teacher": {"accuracy": {"metric": "accuracy", "value": 0.9}},
        "student": {"precision": "fp32"},
        "engines": engines,
    }
    rows = evaluate_constraints(report, {"max_accuracy_drop": 0.01}, {"latency_budget_ms": 10})
    assert [(r["name"], r["pass"], r["engine"], r["value"]) for r in rows] == [
        ("latency_p99_ms", True, "tensorrt-fp16", 2.0),
        (
            "accuracy_drop",
            True,
            "tensorrt-fp16, measured on onnxruntime-cpu-fp32 (export/model.onnx)",
            0.0,
        ),
    ]
