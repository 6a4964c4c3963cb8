"""Units, precision and provenance of the figures report.md, report.html, report.png and the
console show: sizes in MB (10^6 bytes) and memory in MiB, three significant figures, latency
timed off the target named as such, every predicted latency with its engine and model."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from kdc.deploy import report_plot
from kdc.deploy.constraints import evaluate_constraints
from kdc.deploy.report import console_summary, render_markdown
from kdc.deploy.report_cells import sig
from kdc.deploy.report_html import render_html
from kdc.deploy.report_plot import render_png
from kdc.rundir import size_mb
from kdc.stages import verify

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"
HOST = "AMD EPYC 7B13 64-Core Processor (2 threads)"
HOST_HEADER = f"latency measured on {HOST} (not the target)"


@pytest.fixture
def report() -> dict:
    """The sample Jetson report, marked as a target this machine cannot time."""
    report = json.loads(SAMPLE.read_text())
    report["target"]["measurable"] = False
    return report


def _console(report: dict) -> str:
    console = Console(record=True, width=250)
    console.print(console_summary(report))
    return console.export_text()


def test_engine_size_is_in_mb_of_a_million_bytes(tmp_path):
    """Every engine's size_mb (ONNX Runtime's, TensorRT's plan) comes from one rundir.size_mb."""
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 1_500_000)
    assert size_mb(plan) == 1.5  # not 1.431 (MiB)


def test_memory_constraint_says_mib(report):
    assert "| memory_mb (MiB) | 2048 | 41 | predicted | tensorrt-int8 | PASS |" in (
        render_markdown(report)
    )
    assert "PASS memory_mb (MiB) 41 (limit 2048, predicted, tensorrt-int8)" in _console(report)


def test_sig_keeps_three_significant_figures():
    assert [sig(v) for v in (0.0381, 0.01446, 0.01241, 3.1, 22.4, 131.7, 2048.0, None)] == [
        "0.0381",
        "0.0145",
        "0.0124",
        "3.10",
        "22.4",
        "132",
        "2048",
        "–",
    ]


def test_small_sizes_and_close_latencies_stay_apart(report):
    int8, fp32 = report["engines"][0], report["engines"][1]
    int8["size_mb"], fp32["size_mb"] = 0.0381, 0.0988
    int8["target_latency"]["p50_ms"], fp32["target_latency"]["p50_ms"] = 0.01241, 0.01446
    md, console = render_markdown(report), _console(report)
    html = render_html(report, b"")
    for text in (md, console, html):
        assert "0.0381" in text and "0.0988" in text
        assert "0.0124 ms p50" in text and "0.0145 ms p50" in text
    assert "| 0.0124 ms p50 | 0.0381 |" in md
    assert "p50 0.0124 ms (not timed)" in md  # the conditions table too


def test_latency_timed_off_the_target_says_where(report):
    md = render_markdown(report)
    assert f"| {HOST_HEADER} | latency predicted (roofline-v1) |" in md
    assert "| 3.10 ms p50 / 3.90 ms p99 |" in md  # the cells: figures; the header: device
    assert f"measured on {HOST} (not the target)" in _console(report)
    host = copy.deepcopy(report)
    host["target"]["measurable"] = True  # a run on this machine: its own timings
    # this machine is the target: the heading still names it (device and threads)
    head = f"| latency measured on {HOST} | latency predicted (roofline-v1) |"
    assert head in render_markdown(host)
    text = _console(host)
    assert "not the target" not in text and f"latency measured on {HOST}" in text


def test_a_batch_other_than_1_is_in_the_latency_headings(report):
    """verify.batch 4: the cells' figures are per batch of 4 rows; the console and report.md
    headings said nothing of it (only report.md's conditions table did)."""
    for part in [report["teacher"], *report["engines"]]:
        for key in ("latency", "target_latency", "predicted_latency"):
            if isinstance(part.get(key), dict):
                part[key]["batch"] = 4
    md, console = render_markdown(report), _console(report)
    assert f"| {HOST_HEADER} at batch 4 | latency predicted (roofline-v1) at batch 4 |" in md
    assert f"{HOST_HEADER} at batch 4" in console and "at batch 4" in console.split(HOST)[1]


def test_device_timing_is_marked_as_on_the_target(report):
    trt = report["engines"][2]
    trt["predicted_latency"] = trt["latency"]
    trt["latency"] = {
        "kind": "measured",
        "device": "jetson-orin-nano-8gb",
        "engine": "tensorrt",
        "p99_ms": 0.81,
        "on_target": True,
    }
    md = render_markdown(report)
    assert HOST_HEADER in md and "jetson-orin-nano-8gb (not the target)" not in md
    assert "| 0.810 ms p99 (on the target: jetson-orin-nano-8gb) |" in md
    trt["status"], trt["reason"] = "bundle", "TensorRT is not installed on this machine"
    text = " ".join(_console(report).split())
    assert "(not the target) or on the target where marked" in text
    assert "timed by kdc, or by trtexec on the device (marked 'on the target')" in text
    from kdc.deploy.constraints import engine_label

    assert f"{engine_label(trt)} is bundle" not in text  # the device built and timed it
    assert f"{engine_label(trt)} is bundle" not in render_markdown(report)  # nor report.md


def _plot_legend(report: dict, monkeypatch) -> list[str]:
    """The legend entries of report.png (read from the figure before it is saved)."""
    texts: list[str] = []
    place = report_plot._place_labels

    def spy(fig, ax, labels):
        texts.extend(t.get_text() for legend in fig.legends for t in legend.get_texts())
        place(fig, ax, labels)

    monkeypatch.setattr(report_plot, "_place_labels", spy)
    render_png(report)
    return texts


def test_plot_names_the_device_of_latency_timed_off_the_target(report, monkeypatch):
    legend = _plot_legend(report, monkeypatch)
    elsewhere = f"measured on {HOST} (not the target)"
    assert f"teacher, latency (p99)\n{elsewhere}\nonnxruntime fp32, batch 1" in legend
    assert f"engine, latency (p99)\n{elsewhere}\nonnxruntime int8, batch 1" in legend
    assert "engine, predicted latency (p50, roofline-v1)" in legend
    budget = next(t for t in legend if t.startswith("latency budget"))
    assert budget.startswith("latency budget 10 ms on jetson-orin-nano-8gb")
    assert "not those\nmeasured on another machine" in budget

    report["target"]["measurable"] = True
    legend = _plot_legend(report, monkeypatch)
    assert f"engine, latency (p99)\nmeasured on {HOST}\nonnxruntime int8, batch 1" in legend
    for lat in (report["teacher"]["latency"], *(e["latency"] for e in report["engines"])):
        lat["device"] = "Intel Xeon"  # a device that does not name its threads
    legend = _plot_legend(report, monkeypatch)
    assert (
        "teacher, latency (p99)\nmeasured on Intel Xeon\nonnxruntime fp32, batch 1, 2 threads"
        in (legend)
    )
    assert not any("not the target" in t or "another machine" in t for t in legend)


def test_pareto_table_names_its_latency_model(report):
    md = render_markdown(report)
    assert "| predicted latency ms (roofline-v1) | chosen |" in md
    assert "- predicted latency: roofline-v1 for jetson-orin-nano-8gb, calibrated from " in md
    assert "| 0.276 |" in md  # sample's fastest Pareto point


PREDICTED = {"kind": "predicted", "model": "roofline-v1", "calibrated_from": "none", "p50_ms": 0.01}


@pytest.fixture
def stub_verify(monkeypatch, tmp_path) -> SimpleNamespace:
    """A verify context whose evaluation, parity, memory and prediction are stubs."""
    acc = {"metric": "accuracy", "value": 0.9, "n": 2}
    monkeypatch.setattr(verify, "evaluate", lambda *a, **k: (dict(acc), np.zeros((2, 3))))
    monkeypatch.setattr(verify, "compare", lambda *a, **k: {"max_abs": 0.0, "cosine": 1.0})
    monkeypatch.setattr(verify, "make_session", lambda *a, **k: None)
    monkeypatch.setattr(verify, "session_options_record", lambda s: {})
    monkeypatch.setattr(verify, "engine_peak_rss_mb", lambda *a, **k: {"kind": "measured"})
    monkeypatch.setattr(verify, "predict_onnx", lambda *a, **k: dict(PREDICTED))
    monkeypatch.setattr(verify, "predict_memory_mb", lambda *a, **k: 0.1)
    (tmp_path / "model.onnx").write_bytes(b"\0" * 1000)
    return SimpleNamespace(
        run=tmp_path,
        target_file=None,
        profile=SimpleNamespace(
            name="jetson-orin-nano-8gb",
            measurable=False,
            runtime=SimpleNamespace(tensorrt="10.3"),
        ),
        cfg=SimpleNamespace(
            task="text-classification",
            verify=SimpleNamespace(threads=1, batch=1),
            build=SimpleNamespace(max_batch=None),
            export=SimpleNamespace(min_cosine=0.99, atol=1e-4, rtol=1e-3),
        ),
        latency_inputs=lambda: {"input_ids": np.zeros((1, 8), dtype=np.int64)},
        latency_padding=lambda: 0.0,
        dla_core=None,
    )


def test_predicted_latency_of_every_engine_names_the_engine(stub_verify):
    """On a TensorRT target (its latency model TensorRT's) only the TensorRT engine is
    predicted; on a CPU device kdc cannot time, the ONNX Runtime engine is."""
    ort = {"engine": "onnxruntime", "precision": "fp32", "status": "built", "path": "model.onnx"}
    built = verify._engine_block(stub_verify, ort, np.zeros((2, 3)), np.zeros((2, 3)), {})
    assert "target_latency" not in built and "target_memory" in built
    stub_verify.profile.runtime.tensorrt = None  # an ARM board's CPU, say
    built = verify._engine_block(stub_verify, ort, np.zeros((2, 3)), np.zeros((2, 3)), {})
    assert built["target_latency"] == {**PREDICTED, "engine": "onnxruntime"}
    md = render_markdown({"engines": [built]})
    assert "| predicted | model roofline-v1, calibrated from none, engine onnxruntime," in md
    trt = {"engine": "tensorrt", "precision": "int8", "status": "bundle", "source": "model.onnx"}
    remote = verify._remote_block(stub_verify, trt, np.zeros((2, 3)))
    assert remote["latency"] == {**PREDICTED, "engine": "tensorrt"}


def test_an_fp16_engines_stand_in_is_labelled_as_the_fp32_graph(stub_verify, report):
    """quantize.precision fp16 for a Jetson: the TensorRT engine's stand-in is the plain FP32
    graph on this CPU, not an INT8 graph with Q/DQ in float; its label, note, constraint line
    and console footnote say so."""
    trt = {"engine": "tensorrt", "precision": "fp16", "status": "bundle", "source": "model.onnx"}
    acc = verify._remote_block(stub_verify, trt, np.zeros((2, 3)))["accuracy"]
    assert acc["engine"] == "onnxruntime-cpu-fp32 (model.onnx)"
    assert "FP32 graph" in acc["note"] and "runs FP16" in acc["note"]
    assert "Q/DQ" not in acc["note"] and "int8" not in acc["note"]
    int8 = verify._remote_block(stub_verify, {**trt, "precision": "int8"}, np.zeros((2, 3)))
    assert int8["accuracy"]["engine"] == f"{verify.SIMULATED} (model.onnx)"
    assert "Q/DQ executed in float" in int8["accuracy"]["note"]
    report["engines"] = [e for e in report["engines"] if e["precision"] != "int8"]
    report["student"]["precision"] = "fp16"
    engine = next(e for e in report["engines"] if e["engine"] == "tensorrt")
    engine.update(accuracy={**acc, "value": 0.8}, ships=True)
    report["teacher"]["accuracy"]["value"] = 0.81
    rows = evaluate_constraints(report, {"max_accuracy_drop": 0.02}, {})
    (drop,) = (r for r in rows if r["name"] == "accuracy_drop")
    assert drop["engine"] == "tensorrt-fp16, measured on onnxruntime-cpu-fp32 (model.onnx)"
    report["constraints"] = rows
    text = _console(report)
    assert "0.8000 accuracy (n=2) *" in text
    assert "* stand-in: the FP32 graph run by ONNX Runtime on this CPU (the target's" in text
    assert "Q/DQ" not in text


def test_int8_stand_in_keeps_this_cpus_accuracy_beside(report):
    """An INT8 engine judged by its Q/DQ stand-in: report.md names the figure of this CPU's
    int8 kernels (whose latency the table shows), and the plot pairs that latency with it."""
    eng = next(e for e in report["engines"] if e["engine"] == "onnxruntime" and "latency" in e)
    eng["accuracy"] = {
        "metric": "accuracy",
        "value": 0.997,
        "n": 359,
        "engine": "onnxruntime-cpu-qdq-simulated",
    }
    eng["accuracy_this_cpu"] = {
        "metric": "accuracy",
        "value": 0.947,
        "n": 359,
        "engine": "onnxruntime-cpu-int8",
    }
    md = render_markdown(report)
    assert "0.9470 accuracy (n=359) from onnxruntime-cpu-int8, this CPU's int8 kernels" in md
    assert report_plot._paired_accuracy(eng, "latency") is eng["accuracy_this_cpu"]
    assert report_plot._paired_accuracy(eng, "target_latency") is eng["accuracy"]


def test_console_says_each_latencys_kind_and_each_accuracys_engine(report):
    """Measured and predicted latencies sit under their own headings, a measured one with the
    p50 a prediction compares with; an INT8 engine judged by a Q/DQ stand-in is marked so and
    shows the accuracy of this CPU's int8 kernels, whose latency it shows."""
    int8 = report["engines"][0]
    int8["accuracy_this_cpu"] = int8["accuracy"]
    int8["accuracy"] = {**int8["accuracy"], "value": 0.85, "engine": verify.SIMULATED}
    text = _console(report)
    assert HOST_HEADER in text and "latency predicted (roofline-v1)" in text
    assert "3.10 ms p50 / 3.90 ms p99" in text and "0.530 ms p50" in text
    assert "0.8500 accuracy (n=379) *; 0.8021 on this CPU's int8 kernels (timed here)" in text
    assert "* stand-in: the INT8 graph run with Q/DQ in float" in text
    assert "predicted: the latency model's p50, never timed" in text


def test_a_pass_with_no_constraints_says_it_checked_nothing(report):
    """No constraint rows (none set, no profile default): the verdict passes vacuously, and says
    so in the console and report.md (a CI gate on it passes any student)."""
    report = {**copy.deepcopy(report), "constraints": [], "passed": True}
    console = _console(report)
    assert "PASSED (no constraints set: nothing was checked)" in console
    assert "add constraints.max_accuracy_drop" in console
    assert "result: PASSED (no constraints set" in render_markdown(report)


def test_the_accuracy_axis_has_no_tick_past_one(report, monkeypatch):
    """The axis keeps room above an accuracy near 1 for the labels, but no tick there."""
    seen: dict = {}
    place = report_plot._place_labels

    def spy(fig, ax, labels):
        seen["ylim"], seen["ticks"] = ax.get_ylim(), list(ax.get_yticks())
        place(fig, ax, labels)

    monkeypatch.setattr(report_plot, "_place_labels", spy)
    for part in [report["teacher"], *report["engines"]]:
        if part.get("accuracy"):
            part["accuracy"]["value"] = 0.997
    render_png(report)
    assert seen["ylim"][1] > 1.0 and seen["ticks"] and max(seen["ticks"]) <= 1.0


def test_the_plot_legend_names_the_dla_core_a_prediction_is_for(report, monkeypatch):
    trt = report["engines"][2]
    trt["latency"] = {**trt["latency"], "model": "roofline-v1+dla", "dla_core": 1}
    legend = _plot_legend(report, monkeypatch)
    assert "engine, predicted latency (p50, roofline-v1+dla, DLA core 1)" in legend


def test_the_latency_axis_names_only_the_kinds_it_plots(report, monkeypatch):
    labels: list[str] = []
    place = report_plot._place_labels

    def spy(fig, ax, texts):
        labels.append(fig.axes[-1].get_xlabel())
        place(fig, ax, texts)

    monkeypatch.setattr(report_plot, "_place_labels", spy)
    render_png(report)
    for part in [report["teacher"], *report["engines"]]:  # a host run with a fixed student
        part.pop("target_latency", None)
        if (part.get("latency") or {}).get("kind") == "predicted":
            part.pop("latency")
    report["search"] = {}
    render_png(report)
    assert labels == ["latency, ms (measured: p99; predicted: p50)", "latency, ms (measured: p99)"]


def test_a_tensorrt_engine_built_here_is_stood_in_for_and_predicted(stub_verify, monkeypatch):
    """Where TensorRT is installed (the device itself) the build stage builds the plan; verify,
    which runs no TensorRT engine, passed its record on bare: the engine that ships had no
    accuracy and no latency, and every constraint read from it failed. It gets the stand-in
    accuracy and the prediction a bundled one gets, keeping its plan's own size."""
    monkeypatch.setattr(verify, "tensorrt_on_target", lambda ctx: True)
    built = {
        "engine": "tensorrt",
        "precision": "int8",
        "status": "built",
        "path": "build/tensorrt/model.plan",
        "source": "model.onnx",
        "size_mb": 0.5,
    }
    rec = verify._verified(stub_verify, built, [built], np.zeros((2, 3)), None, {}, {})
    assert rec["status"] == "built" and rec["size_mb"] == 0.5 and "size_note" not in rec
    assert rec["accuracy"]["stand_in"] == "qdq-in-float"
    assert rec["latency"] == {**PREDICTED, "engine": "tensorrt"}
    report = {
        "target": {"name": "jetson-orin-nano-8gb", "measurable": False},
        "teacher": {"accuracy": {"metric": "accuracy", "value": 0.9}},
        "student": {"precision": "int8"},
        "engines": [{**rec, "ships": True}],
    }
    rows = evaluate_constraints(report, {"max_accuracy_drop": 0.01, "latency_budget_ms": 1}, {})
    assert [(r["name"], r["pass"], r["source"]) for r in rows] == [
        ("latency_p99_ms", True, "predicted"),
        ("accuracy_drop", True, "measured"),
    ]
    bundled = {k: v for k, v in built.items() if k != "size_mb"} | {"status": "bundle"}
    rec = verify._verified(stub_verify, bundled, [bundled], np.zeros((2, 3)), None, {}, {})
    assert rec["size_mb"] == 0.001 and "built on the device" in rec["size_note"]


def test_the_students_row_names_the_engine_that_ships(report):
    """An FP32 student on a TensorRT target ships the engine TensorRT builds in FP16: its row
    said "ships fp32"; it names the shipped engine."""
    report["student"]["precision"] = "fp32"
    for e in report["engines"]:
        e.pop("ships", None)
    trt = next(
        e for e in report["engines"] if e["engine"] == "tensorrt" and e["precision"] == "fp16"
    )
    trt["ships"] = True
    md = render_markdown(report)
    (row,) = (line for line in md.splitlines() if line.startswith("| student (pytorch)"))
    assert "| ships tensorrt-fp16 |" in row
