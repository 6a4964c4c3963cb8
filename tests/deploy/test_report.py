import base64
import json
import struct
from pathlib import Path

import pytest
from matplotlib.text import Text
from rich.console import Console

from kdc.deploy.report import console_summary, render_markdown, write_report
from kdc.deploy.report_plot import render_png

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"
ENGINES = ("onnxruntime-int8", "onnxruntime-fp32", "tensorrt-int8", "tensorrt-fp16")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which follows the 8-byte PNG signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(SAMPLE.read_text())


@pytest.fixture(scope="module")
def written(report, tmp_path_factory) -> list[Path]:
    return write_report(report, tmp_path_factory.mktemp("run"))


def test_write_report_writes_four_files_and_no_temporaries(written, report):
    assert [p.name for p in written] == ["report.json", "report.md", "report.png", "report.html"]
    assert json.loads(written[0].read_text()) == report
    assert sorted(p.name for p in written[0].parent.iterdir()) == sorted(p.name for p in written)


def test_png_is_a_real_png_of_about_1200_by_800(written):
    width, height = png_size(written[2].read_bytes())
    assert abs(width - 1200) <= 20 and abs(height - 800) <= 20


def test_html_embeds_the_plot_and_the_tables(written):
    html = written[3].read_text()
    assert html.startswith("<!DOCTYPE html>")
    start = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    png = base64.b64decode(html[start : html.index('"', start)])
    assert png == written[2].read_bytes()
    assert html.count("<table>") >= 4  # models, constraints, Pareto, conditions
    for label in (*ENGINES, "latency_p99_ms", "accuracy_drop", "Pareto", "roofline-v1"):
        assert label in html
    assert 'class="PASS"' in html and "<script" not in html


def test_markdown_lists_every_engine_kind_and_conditions(written, report):
    md = written[1].read_text()
    assert md == render_markdown(report)
    for label in ENGINES:
        assert label in md
    assert "| onnxruntime-int8 | measured | device AMD EPYC 7B13" in md
    for fact in (
        "warm-up 50",
        "iterations 500",
        "threads 2",
        "batch 1",
        "p50/p90/p99 3.10/3.30/3.90 ms",
        "cv 4.1%",
        "input input_ids/attention_mask 1×128",  # a text model's sequence length
    ):
        assert fact in md
    assert "| tensorrt-int8 | predicted | model roofline-v1, calibrated from none" in md
    assert "(not timed)" in md
    assert "result: PASSED" in md and "target: jetson-orin-nano-8gb" in md
    # report.json's facts: the hashes a run is identified by, each model's FLOPs
    assert "config sha256 9f2c1d7e4b0a, profile sha256 4e1f0c9b8a7d" in md
    assert "2.90 GFLOPs" in md and "340 MFLOPs" in md
    assert "| latency_p99_ms | 10 | 0.55 | predicted p50 | onnxruntime-int8 | PASS |" in md
    assert "## Search: Pareto front" in md and "| yes |" in md
    assert "tensorrt-int8 is bundle: TensorRT is not installed" in md
    assert "onnxruntime-int8: coefficient of variation 4.1%" in md


def test_failed_constraint_without_value_shows_reason(report):
    failing = {
        **report,
        "passed": False,
        "constraints": [
            {
                "name": "size_mb",
                "limit": 5.0,
                "value": None,
                "source": None,
                "pass": False,
                "engine": None,
                "reason": "no built engine of precision fp16",
            }
        ],
    }
    md = render_markdown(failing)
    assert "result: FAILED" in md
    assert "| size_mb | 5 | – | – | – | FAIL | no built engine of precision fp16 |" in md


def test_minimal_report_still_renders():
    minimal = {"run": {"name": "empty"}, "target": {"name": "host"}, "engines": []}
    md = render_markdown(minimal)
    assert "No constraints were set." in md and "## Search" not in md
    assert png_size(render_png(minimal))[0] > 0


def test_fixed_student_search_says_it_used_no_proxy(report):
    fixed = {**report, "search": {**report["search"], "strategy": "fixed", "proxy": None}}
    assert "proxy: none (fixed student)" in render_markdown(fixed)


def test_plot_marks_the_chosen_student(report, monkeypatch):
    from kdc.deploy import report_plot

    rings = []
    ring = report_plot._ring
    monkeypatch.setattr(
        report_plot,
        "_ring",
        lambda ax, x, y, label, **kw: rings.append(label) or ring(ax, x, y, label, **kw),
    )
    render_png(report)  # the search panel has the chosen row
    assert rings == ["chosen student"]

    # a fixed student has no search point: the engine that ships is ringed instead
    rings.clear()
    engines = [
        {**e, "ships": e["engine"] == "onnxruntime" and e["precision"] == "int8"}
        for e in report["engines"]
    ]
    fixed = {
        **report,
        "search": {"strategy": "fixed", "candidates": [{"chosen": True}]},
        "engines": engines,
    }
    render_png(fixed)
    assert rings[0] == "chosen student (the engine that ships)" and set(rings[1:]) <= {None}


def test_plot_labels_of_coinciding_engines_are_merged_and_do_not_overlap(report, monkeypatch):
    from kdc.deploy import report_plot

    # five engines at the same accuracy and (nearly) the same latency, as on the digits example
    latency = {"kind": "measured", "p99_ms": 0.034}
    engines = [
        {
            "engine": "onnxruntime",
            "precision": p,
            "status": "built",
            "accuracy": {"metric": "accuracy", "value": 0.997},
            "latency": {**latency, "p99_ms": 0.034 + 1e-5 * i},
            "target_latency": {"kind": "predicted", "p50_ms": 0.012 + 0.002 * i},
        }
        for i, p in enumerate(("fp32", "int8", "fp16", "int4", "bf16"))
    ]
    crowded = {**report, "engines": engines, "search": {}}
    texts = []
    place = report_plot._place_labels

    def spy(fig, ax, labels):
        place(fig, ax, labels)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        # the text's own box (an annotation's extent includes its leader line)
        texts.extend((t.get_text(), Text.get_window_extent(t, renderer)) for t in ax.texts)

    monkeypatch.setattr(report_plot, "_place_labels", spy)
    render_png(crowded)
    names = [t for t, _ in texts]
    merged = next(t for t in names if t.startswith("onnxruntime-fp32,"))
    assert all(f"onnxruntime-{p}" in merged for p in ("int8", "fp16", "int4", "bf16"))
    boxes = [b for _, b in texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_plot_says_an_engines_accuracy_is_a_stand_in(report, monkeypatch):
    from kdc.deploy import report_plot

    acc = {"metric": "accuracy", "value": 0.8, "engine": "onnxruntime-cpu-qdq-simulated"}
    trt = {
        "engine": "tensorrt",
        "precision": "int8",
        "status": "bundle",
        "accuracy": {**acc, "stand_in": "qdq-in-float"},
        "target_latency": {"kind": "predicted", "p50_ms": 0.5},
    }
    texts: list[str] = []
    place = report_plot._place_labels
    monkeypatch.setattr(
        report_plot,
        "_place_labels",
        lambda fig, ax, labels: texts.extend(t for *_, t in labels) or place(fig, ax, labels),
    )
    render_png({**report, "engines": [trt], "search": {}})
    (label,) = [t for t in texts if t.startswith("tensorrt-int8")]
    assert "(accuracy of onnxruntime-cpu-qdq-simulated, a stand-in)" in label


def test_console_summary_shows_engines_and_constraints(report):
    console = Console(record=True, width=120)
    console.print(console_summary(report))
    text = console.export_text()
    for label in ("teacher", *ENGINES):
        assert label in text
    assert "PASS latency_p99_ms 0.55 (limit 10, predicted p50, onnxruntime-int8)" in text
    assert "PASSED" in text

    assert "latency not gated" not in text and "latency not gated" not in render_markdown(report)


def test_constraints_without_a_latency_budget_say_latency_was_not_gated(report):
    rows = [c for c in report["constraints"] if c["name"] != "latency_p99_ms"]
    assert rows
    ungated = {**report, "target": {**report["target"], "name": "host"}, "constraints": rows}
    console = Console(record=True, width=200)
    console.print(console_summary(ungated, brief=True))
    why = "latency not gated: no constraints.latency_budget_ms, and host's profile sets no default"
    assert why in console.export_text() and why in render_markdown(ungated)


def test_constraints_without_an_accuracy_limit_say_accuracy_was_not_gated(report):
    """A Jetson config with no max_accuracy_drop (no profile sets one) passed on latency and
    memory alone, and nothing said the shipped engine's accuracy was never checked."""
    accuracy = {"accuracy_drop", "percent_max_degradation"}
    assert accuracy & {c["name"] for c in report["constraints"]}
    why = "accuracy not gated: no constraints.max_accuracy_drop or percent_max_degradation"
    rows = [c for c in report["constraints"] if c["name"] not in accuracy]
    for case, shown in ((report, False), ({**report, "constraints": rows}, True)):
        console = Console(record=True, width=200)
        console.print(console_summary(case, brief=True))
        assert (why in console.export_text()) is shown and (why in render_markdown(case)) is shown


def test_engine_warnings_are_listed_in_the_markdown(report):
    """An engine's own warnings (verify's INT8 checks) reach report.md's Warnings section."""
    from kdc.stages.verify import _warn_if_int8_not_faster

    engines = json.loads(json.dumps(report["engines"]))
    int8, fp32 = engines[0], engines[1]
    int8["latency"] = {**int8["latency"], "p50_ms": fp32["latency"]["p50_ms"] / 1.05}
    _warn_if_int8_not_faster(engines)
    (warning,) = int8["warnings"]
    assert "only 1.05x FP32's speed" in warning and "quantize.precision: fp32" in warning
    assert ("INT8 saves size" in warning) == (int8["size_mb"] < fp32["size_mb"])
    bigger = json.loads(json.dumps(engines))  # a tiny model's INT8 file can be the larger one
    bigger[0].pop("warnings")
    bigger[0]["size_mb"] = fp32["size_mb"] * 1.1
    _warn_if_int8_not_faster(bigger)
    assert "saves size" not in bigger[0]["warnings"][0] and "no larger" in bigger[0]["warnings"][0]
    md = render_markdown({**report, "engines": engines})
    assert f"- onnxruntime-int8: {warning}" in md
    console = Console(width=400, record=True)
    console.print(console_summary({**report, "engines": engines}))
    assert f"onnxruntime-int8: {warning}" in console.export_text()
    faster = json.loads(json.dumps(report["engines"]))  # the sample's INT8 is the faster one
    _warn_if_int8_not_faster(faster)
    assert "warnings" not in faster[0]


@pytest.mark.parametrize("flags", [{"avx2"}, {"avx2", "avx512_vnni"}])
def test_a_slow_int8_engine_is_blamed_on_vnni_only_where_the_cpu_lacks_it(
    report, monkeypatch, flags
):
    """'without VNNI' was said on the VNNI/AMX Xeon too (a tiny embedding model's INT8 graph)."""
    import kdc.profiles as P
    import kdc.stages.verify as V

    monkeypatch.setattr(P, "cpu_info", lambda: ("a CPU", flags))
    engines = json.loads(json.dumps(report["engines"]))
    engines[0]["latency"] = {**engines[0]["latency"], "p50_ms": engines[1]["latency"]["p50_ms"]}
    V._warn_if_int8_not_faster(engines)
    (warning,) = engines[0]["warnings"]
    if "avx512_vnni" in flags:
        assert "without VNNI" not in warning and "int8 kernels gain little here" in warning
    else:
        assert "int8 kernels gain little without VNNI" in warning


def test_markdown_rows_pair_accuracy_memory_size_and_parity_with_their_sources(report):
    """Every figure of an engine row says where it comes from: the int8 kernels timed here next to
    a simulated headline accuracy, measured and predicted memory, a size that is not the engine's,
    an int8 parity judged by its cosine floor; the search names its latency model."""
    import copy

    r = copy.deepcopy(report)
    e = next(e for e in r["engines"] if (e["engine"], e["precision"]) == ("onnxruntime", "int8"))
    e["accuracy"]["engine"] = "onnxruntime-cpu-qdq-simulated"
    e["accuracy_this_cpu"] = {**e["accuracy"], "value": 0.5, "engine": "onnxruntime-cpu-int8"}
    e["memory"] = {"kind": "measured", "peak_rss_mb": 56.03, "engine_mb": 11.45}
    e["target_memory"] = {"kind": "predicted", "peak_mb": 0.025}
    e["parity"].update(within_tolerance=False, passed=True, cosine_floor=0.9, min_cosine=0.95)
    trt = next(e for e in r["engines"] if (e["engine"], e["precision"]) == ("tensorrt", "int8"))
    trt.update(size_mb=0.0361, size_note="size of the ONNX the engine is built from")
    r["search"]["latency_model"] = {
        "model": "roofline-v9",
        "calibrated_from": "a fit",
        "target": "jetson-orin-nano-8gb",
        "precision": "int8",
        "batch": 1,
    }
    md = render_markdown(r)
    [row] = [ln for ln in md.splitlines() if ln.startswith("| onnxruntime-int8 (CPU")]
    assert "; 0.5000 accuracy" in row and "on this CPU's int8 kernels (timed here)" in row
    assert "onnxruntime-cpu-qdq-simulated; onnxruntime-cpu-int8" in row
    assert "56.0 measured peak RSS; 0.0250 predicted" in row
    # the floor judges the lowest row cosine, not the mean beside max-abs
    assert "(beyond atol/rtol; lowest row cosine 0.95000, floor 0.9: PASS)" in row
    # an INT8 engine's floor judges the mean row cosine, and the lowest is still shown
    e["parity"].update(
        cosine_judged="mean",
        cosine=0.97771,
        min_cosine=-0.15225,
        argmax_agreement=0.96875,
        agreement_floor=0.9,
    )
    [row] = [
        ln for ln in render_markdown(r).splitlines() if ln.startswith("| onnxruntime-int8 (CPU")
    ]
    want = (
        "mean row cosine 0.97771, class agreement 96.9 % (floor 90 %), floor 0.9: PASS; "
        "lowest row cosine -0.15225)"
    )
    assert want in row, row
    [row] = [ln for ln in md.splitlines() if ln.startswith("| tensorrt-int8 | bundle")]
    assert "0.0361 (size of the ONNX the engine is built from)" in row
    assert "predicted latency: roofline-v9 for jetson-orin-nano-8gb, calibrated from a fit " in md
    assert "(precision int8, batch 1) (not timed)" in md
    assert "predicted latency ms (roofline-v9)" in md


def test_plot_gives_every_point_its_own_label_apart_from_the_others(report, monkeypatch):
    """As on the vit example: an engine's measured (filled) and predicted (hollow) points at one
    accuracy, another engine's measured point beside: each point gets its own label, labels keep
    a gap so two never read as one, and a label not right beside its point has a leader."""
    from kdc.deploy import report_plot

    acc = {"metric": "accuracy", "value": 0.9777}
    engines = [
        {
            "engine": "onnxruntime",
            "precision": p,
            "status": "built",
            "accuracy": acc,
            "latency": {"kind": "measured", "p99_ms": ms},
            "target_latency": {"kind": "predicted", "p50_ms": ms / 10},
        }
        for p, ms in (("fp32", 0.815), ("int8", 2.18))
    ]
    labels = []  # (text, point in pixels, the text's box, whether it has a leader)
    place = report_plot._place_labels

    def spy(fig, ax, points):
        place(fig, ax, points)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for t in ax.texts:
            box = Text.get_window_extent(t, renderer)
            labels.append((t.get_text(), tuple(ax.transData.transform(t.xy)), box, t.arrow_patch))

    monkeypatch.setattr(report_plot, "_place_labels", spy)
    render_png({**report, "engines": engines, "search": {}})
    texts = [text for text, *_ in labels]
    for name in ("onnxruntime-fp32", "onnxruntime-int8"):
        assert texts.count(name) == 1 and texts.count(f"{name} (predicted for target)") == 1
    assert len({xy for _, xy, _, _ in labels}) == len(labels)  # each at its own point
    boxes = [box.padded(report_plot.GAP_PX / 2 - 0.5) for _, _, box, _ in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    for _, (px, py), box, leader in labels:
        if leader is None:  # right beside its point: starts just right of it, on its line
            assert 0 < box.x0 - px < 20 and box.y0 - 12 < py < box.y1


def test_markdown_says_how_each_int8_graph_was_made(report):
    """An INT8 engine's quantization record (PTQ method, calibration, ptq: auto's comparison; or
    QAT's scheme and epochs) reaches report.md; it was only in report.json."""
    import copy

    r = copy.deepcopy(report)
    e = next(e for e in r["engines"] if (e["engine"], e["precision"]) == ("onnxruntime", "int8"))
    e["quantization"] = {
        "method": "ort-static-qdq",
        "calibration_rows": 128,
        "weights": "int8 per-channel",
        "activations": "uint8 asymmetric",
        "backend_choice": {
            "loss": {"onnxruntime": 0.004, "nncf": 0.008},
            "deviation": {"onnxruntime": 0.01234, "nncf": 0.02},
            "latency": {
                "nncf": {
                    "kind": "measured",
                    "device": "Xeon (1 thread)",
                    "engine": "onnxruntime",
                    "precision": "int8",
                    "batch": 1,
                    "threads": 1,
                    "p50_ms": 8.7,
                    "protocol": "median p50 of 3 interleaved rounds",
                }
            },
        },
        "loss": {"measure": "share of rows whose class differs from FP32"},
    }
    md = render_markdown(r)
    assert (
        "- onnxruntime-int8: made by post-training quantization, ort-static-qdq calibrated on 128 "
        "training rows, weights int8 per-channel, activations uint8 asymmetric; ptq: auto "
        "compared onnxruntime (loss 0.004, deviation 0.0123) and nncf (loss 0.008, deviation "
        "0.0200, p50 8.70 ms), loss: share of "
        "rows whose class differs from FP32, deviation: RMS(INT8 - FP32 outputs) / RMS(FP32 "
        "outputs); p50 measured on Xeon (1 thread) at batch 1, median p50 of 3 "
        "interleaved rounds"
    ) in md
    e["quantization"] = {"method": "qat", "scheme": "NNCF fake quantizers", "epochs": 2}
    assert (
        "- onnxruntime-int8: made by quantization-aware training, 2 epochs of distillation "
        "with NNCF fake quantizers" in render_markdown(r)
    )
    e["quantization"]["weights"] = "int8 per-channel"  # build records it for QAT too
    assert "with NNCF fake quantizers, weights int8 per-channel" in render_markdown(r)


def test_an_earlier_builds_bare_backend_timings_are_labelled_not_shown_bare(report):
    """A run built before ptq: auto's timings were latency objects keeps a bare p50_ms per
    backend in engines.json until build runs again: the report stage labels what it states
    (measured, ONNX Runtime, INT8, threads, protocol) and says the rest was not recorded."""
    import copy

    from kdc.stages.report import labelled_backend_timings

    r = copy.deepcopy(report)
    e = next(e for e in r["engines"] if (e["engine"], e["precision"]) == ("onnxruntime", "int8"))
    choice = {
        "loss": {"onnxruntime": 0.0, "nncf": 0.0},
        "deviation": {"onnxruntime": 0.011, "nncf": 0.02},
        "p50_ms": {"onnxruntime": 0.0131, "nncf": 0.0142},
        "threads": 2,
        "protocol": "median p50 of 3 interleaved rounds",
        "rule": "closest to FP32",
    }
    e["quantization"] = {"method": "ort-static-qdq", "backend_choice": choice}
    others = copy.deepcopy([o for o in r["engines"] if o is not e])
    labelled_backend_timings(r["engines"])
    assert [o for o in r["engines"] if o is not e] == others  # engines without it: as they were
    assert set(choice) == {"loss", "deviation", "rule", "latency"}  # no bare p50_ms left
    assert choice["latency"]["nncf"] == {
        "kind": "measured",
        "engine": "onnxruntime",
        "precision": "int8",
        "p50_ms": 0.0142,
        "threads": 2,
        "protocol": "median p50 of 3 interleaved rounds",
        "details": "device and batch not recorded (run build again)",
    }
    md = render_markdown(r)
    assert "nncf (loss 0, deviation 0.0200, p50 0.0142 ms)" in md
    assert (
        "; p50 measured at 2 threads, median p50 of 3 interleaved rounds; device and batch not "
        "recorded (run build again)"
    ) in md
    assert "measured on —" not in md and "batch —" not in md
    again = copy.deepcopy(r["engines"])  # the labelled form (as build records it) is kept
    assert labelled_backend_timings(r["engines"]) == again
    # the first builds to time the graphs recorded neither threads nor protocol
    e["quantization"]["backend_choice"] = {"loss": {"nncf": 0.0}, "p50_ms": {"nncf": 0.0142}}
    labelled_backend_timings(r["engines"])
    md = render_markdown(r)
    assert "p50 0.0142 ms); p50 measured; device and batch not recorded (run build again)" in md


def test_a_device_timed_engine_still_shows_its_prediction(report):
    """After `kdc verify --device-results` the TensorRT row's measured latency stands beside the
    search's prediction, so the latency model's error stays in view."""
    import copy

    r = copy.deepcopy(report)
    trt = next(e for e in r["engines"] if e["engine"] == "tensorrt")
    trt["predicted_latency"] = trt["latency"]
    trt["latency"] = {"kind": "measured", "device": "Orin Nano", "p50_ms": 8.48, "p99_ms": 9.1}
    row = next(ln for ln in render_markdown(r).splitlines() if ln.startswith("| tensorrt-int8 |"))
    assert "8.48 ms p50 / 9.10 ms p99 | 0.530 ms p50 |" in row, row
    # the prediction's conditions (latency model, calibration) are listed as the timing's are
    cond = [ln for ln in render_markdown(r).splitlines() if ln.startswith("| tensorrt-int8 ")]
    assert any(
        ln.startswith("| tensorrt-int8 (for target) | predicted | model roofline") for ln in cond
    )
