"""Device results read back as a measured latency object, the device's parity check and
warnings; results for another target, model or device are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
from device_bundle import (
    JETSON,
    META,
    ORIN_NANO,
    PARITY,
    edit_json,
    report_with,
    write_times,
)
from rich.console import Console

from kdc.deploy.device_results import (
    profiles_of_device,
    read_device_results,
    trt_version_from_banner,
)
from kdc.deploy.report import console_summary, render_markdown
from kdc.deploy.trtexec import CV_LIMIT, parse_export_times
from kdc.errors import UserError
from kdc.rundir import sha256_file
from kdc.stages.verify import device_figures


@pytest.fixture
def bundle(tmp_path):
    d = tmp_path / "build" / "bundle"  # where a run keeps it
    d.mkdir(parents=True)
    (d / "bundle.json").write_text(json.dumps(META))
    return d


@pytest.fixture
def results(bundle):
    d = bundle / "results"
    d.mkdir()
    write_times(d, [float(v) for v in range(1, 101)])
    (d / "parity.json").write_text(json.dumps(PARITY))
    device = {"device": ORIN_NANO, "trtexec": "TensorRT v100300", "profile": JETSON}
    (d / "device.json").write_text(json.dumps({**device, "onnx_sha256": META["onnx_sha256"]}))
    return d


def test_device_results_are_a_measured_latency_object(results, bundle):
    out = read_device_results(results, bundle, JETSON)
    lat = out["latency"]
    assert lat["kind"] == "measured" and lat["engine"] == "tensorrt"
    assert lat["device"] == ORIN_NANO
    assert lat["tensorrt"] == "10.3.0" and lat["precision"] == "int8" and lat["batch"] == 1
    assert lat["iterations"] == 100 and lat["p50_ms"] == pytest.approx(50.5)
    assert lat["mean_ms"] == pytest.approx(50.5) and lat["p99_ms"] == pytest.approx(99.01)
    assert lat["cv"] == pytest.approx(28.866 / 50.5, rel=1e-3)
    assert str(results) in lat["source"] and "--noDataTransfers" in lat["protocol"]
    assert "note" not in lat


def test_a_dla_bundles_timing_names_its_core(results, bundle):
    """A DLA engine's device timing is not comparable with the GPU engine's (kdc check)."""
    assert "dla_core" not in read_device_results(results, bundle, JETSON)["latency"]
    edit_json(bundle / "bundle.json", dla_core=0)
    lat = read_device_results(results, bundle, JETSON)["latency"]
    assert lat["dla_core"] == 0
    from kdc.deploy.check import compare

    def report(latency: dict) -> dict:
        engine = {"engine": "tensorrt", "precision": "int8", "status": "built"}
        return {
            "task": "text-classification",
            "target": {"name": JETSON},
            "engines": [{**engine, "latency": latency}],
        }

    gpu = {k: v for k, v in lat.items() if k != "dla_core"}
    (r, *_) = compare(report(lat), report(gpu))
    assert r.status == "missing" and "dla_core None vs 0" in r.message


def test_device_parity_is_in_the_reports_terms(results, bundle):
    parity = read_device_results(results, bundle, JETSON)["parity"]
    assert parity["on_target"] and parity["passed"] and parity["runner"] == "tensorrt"
    assert parity["device"] == ORIN_NANO and parity["n"] == 8
    assert parity["cosine"] == 0.9995 and parity["min_cosine"] == 0.998  # lowest row
    assert parity["cosine_floor"] == 0.99 and parity["argmax_agreement"] == 1.0


def test_export_times_compute_metric(results):
    assert parse_export_times(results / "times.json", "computeMs")["p50_ms"] == pytest.approx(25.25)


def test_version_mismatch_is_noted(results, bundle):
    edit_json(bundle / "bundle.json", tensorrt_expected="11.0")
    lat = read_device_results(results, bundle, JETSON)["latency"]
    assert "expected TensorRT 11.0" in lat["note"]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("times.json", None, "times.json: file not found"),
        ("times.json", "{not json", "times.json: not a trtexec"),
        ("times.json", json.dumps([{"count": 3}]), "no per-iteration 'latencyMs'"),
        (
            "times.json",
            '[{"latencyMs": 1.0}, {"latencyMs": Infinity}]',
            r"times.json: field 'latencyMs': 1 of 2 'latencyMs' values are not positive finite "
            r"times \(first: Infinity\)",
        ),
        ("times.json", '[{"latencyMs": NaN}]', "times.json: field 'latencyMs': 1 of 1"),
        ("times.json", json.dumps([{"latencyMs": 0.0}] * 3), "3 of 3 'latencyMs' values"),
        ("times.json", json.dumps([{"latencyMs": -1}, {"latencyMs": 2}]), r"\(first: -1\)"),
        ("times.json", json.dumps([{"latencyMs": True}]), r"\(first: true\)"),
        ("parity.json", None, "parity.json: file not found"),
        ("parity.json", "[1, 2", "parity.json: corrupt JSON"),
        ("parity.json", json.dumps({"pass": "yes"}), "parity.json: field 'pass'"),
        ("parity.json", json.dumps({"cosine": "high"}), "parity.json: field 'cosine'"),
        ("parity.json", json.dumps({"notes": "oops"}), "parity.json: field 'notes'"),
        ("parity.json", json.dumps({"runner": 3}), "parity.json: field 'runner'"),
        ("parity.json", '{"pass": true, "cosine": NaN}', "field 'cosine': .* not a finite"),
        (
            "parity.json",
            json.dumps({"pass": True, "runner": "tensorrt"}),
            "parity.json: field 'n': a pass without its figures: n, max_abs, mean_abs, cosine, "
            "cosine_min_row, argmax_agreement missing",
        ),
        ("device.json", "oops", "device.json: corrupt JSON"),
        # without it neither the device nor the model timed can be checked against the run
        ("device.json", None, "device.json: file not found"),
    ],
)
def test_missing_or_corrupt_files_name_the_file(results, bundle, name, content, match):
    path = results / name
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(UserError, match=match):
        read_device_results(results, bundle, JETSON)


def test_missing_bundle_json_names_it(results, bundle):
    (bundle / "bundle.json").unlink()
    with pytest.raises(UserError, match="bundle.json: file not found"):
        read_device_results(results, bundle, JETSON)


@pytest.mark.parametrize(
    "banner, version",
    [
        ("TensorRT v100300", "10.3.0"),
        ("TensorRT v110102", "11.1.2"),
        ("TensorRT v8601", "8.6.1"),
        ("unknown", None),
    ],
)
def test_trtexec_banner_versions(banner, version):
    assert trt_version_from_banner(banner) == version


# --- a failed device parity check fails verification ---------------------------------------


def test_failed_device_parity_fails_the_constraints_and_shows(results, bundle):
    edit_json(results / "parity.json", cosine=0.5, argmax_agreement=0.3, **{"pass": False})
    dev = read_device_results(results, bundle, JETSON)
    assert not dev["parity"]["passed"]
    assert any("device parity FAILED: cosine 0.5000" in w for w in dev["warnings"])
    report = report_with({"parity": dev["parity"], "warnings": dev["warnings"]})
    row = next(r for r in report["constraints"] if r["name"] == "device_parity")
    assert row["pass"] is False and row["value"] == 0.5 and row["limit"] == 0.99
    assert row["engine"] == "tensorrt-int8" and "runner tensorrt" in row["note"]
    assert "argmax agreement 0.300" in row["note"]
    assert report["passed"] is False  # exit 1
    md = render_markdown(report)
    assert "| device_parity | 0.99 | 0.5 | measured | tensorrt-int8 | FAIL |" in md
    assert "(device, tensorrt: FAIL; cosine of all outputs)" in md
    console = Console(record=True, width=300)
    console.print(console_summary(report))
    text = console.export_text()
    assert "FAIL device_parity 0.5 (limit 0.99, measured, tensorrt-int8)" in text
    assert "argmax agreement 0.300" in text and "FAILED" in text


def test_passing_device_parity_passes_and_is_shown(results, bundle):
    dev = read_device_results(results, bundle, JETSON)
    assert dev["parity"]["passed"]
    report = report_with({"parity": dev["parity"]})
    row = next(r for r in report["constraints"] if r["name"] == "device_parity")
    assert row["pass"] is True and report["passed"] is True
    assert "(device, tensorrt: PASS; cosine of all outputs)" in render_markdown(report)


def test_a_pass_flag_below_the_floor_still_fails(results, bundle):
    edit_json(results / "parity.json", cosine=0.95)  # "pass": true, but under the bundle's 0.99
    assert not read_device_results(results, bundle, JETSON)["parity"]["passed"]


def test_parity_the_device_could_not_check_fails_with_its_reason(results, bundle):
    (results / "parity.json").write_text(
        json.dumps({"status": "unavailable", "notes": ["onnxruntime: No module named 'x'"]})
    )
    dev = read_device_results(results, bundle, JETSON)
    report = report_with({"parity": dev["parity"]})
    row = next(r for r in report["constraints"] if r["name"] == "device_parity")
    assert row["pass"] is False and row["value"] is None
    assert "not checked: onnxruntime: No module named 'x'" in row["reason"]
    assert report["passed"] is False


def test_parity_run_by_onnxruntime_fails_device_parity(results, bundle):
    """A Python without tensorrt (a venv first on the runner's PATH): parity.py checked
    model.onnx with ONNX Runtime on the CPU, not the engine; that is no pass (exit 1)."""
    notes = ["tensorrt: ModuleNotFoundError: No module named 'tensorrt'"]
    edit_json(results / "parity.json", runner="onnxruntime", notes=notes)
    dev = read_device_results(results, bundle, JETSON)
    assert dev["parity"]["passed"] is False and dev["parity"]["runner"] == "onnxruntime"
    warning = dev["warnings"][0]  # then the latency's cv
    assert warning.startswith(
        "device parity FAILED: parity was checked with onnxruntime on model.onnx, not the "
        "TensorRT engine (model.plan) (tensorrt: ModuleNotFoundError: No module named 'tensorrt')"
    )
    assert "run bench.sh with a Python that imports tensorrt (PYTHON=/usr/bin/python3" in warning
    report = report_with({"parity": dev["parity"], "warnings": dev["warnings"]})
    row = next(r for r in report["constraints"] if r["name"] == "device_parity")
    assert row["pass"] is False and row["value"] is None  # its cosine is not the engine's
    assert "checked with onnxruntime on model.onnx, not the TensorRT engine" in row["reason"]
    assert report["passed"] is False
    md = render_markdown(report)
    assert "(device, onnxruntime: FAIL; cosine of all outputs)" in md
    console = Console(record=True, width=400)
    console.print(console_summary(report, brief=True))
    text = console.export_text()
    assert "FAIL device_parity: no value (parity was checked with onnxruntime" in text
    assert "PASS device_parity" not in text and "FAILED" in text


def test_a_passing_onnxruntime_check_in_an_older_report_fails(results, bundle):
    """A report whose device parity was recorded as passed by ONNX Runtime is judged again."""
    parity = {**read_device_results(results, bundle, JETSON)["parity"], "runner": "onnxruntime"}
    report = report_with({"parity": {**parity, "passed": True}})
    row = next(r for r in report["constraints"] if r["name"] == "device_parity")
    assert row["pass"] is False and "not the TensorRT engine" in row["reason"]


def _ctx(run: Path, target: str, results: Path) -> SimpleNamespace:
    return SimpleNamespace(run=run, profile=SimpleNamespace(name=target), device_results=results)


TRT_REC = {"engine": "tensorrt", "precision": "int8", "status": "bundle", "path": "build/bundle"}


def test_verify_puts_device_parity_in_the_engines_parity(tmp_path, results):
    edit_json(results / "parity.json", cosine=0.5, **{"pass": False})
    rec = {**TRT_REC, "source": "build/onnxruntime/model_int8.onnx"}
    figures = device_figures(_ctx(tmp_path, JETSON, results), [rec])["build/bundle"]
    assert figures["parity"]["on_target"] and figures["parity"]["passed"] is False
    assert figures["latency"]["kind"] == "measured" and figures["latency"]["on_target"]
    assert "device parity FAILED" in figures["warnings"][0]


def test_verify_reads_the_bundle_written_for_its_target(tmp_path, results, bundle):
    t4 = tmp_path / "build" / "bundle-nvidia-t4"
    t4.mkdir()
    (t4 / "bundle.json").write_text(json.dumps({**META, "profile": "nvidia-t4"}))
    edit_json(results / "device.json", device="Tesla T4", profile="nvidia-t4")  # its bench.sh's
    rec = {**TRT_REC, "source": "m.onnx"}
    figures = device_figures(_ctx(tmp_path, "nvidia-t4", results), [rec])["build/bundle"]
    assert figures["latency"]["device"] == "Tesla T4"
    edit_json(results / "device.json", profile=JETSON)
    with pytest.raises(UserError, match="device 'Tesla T4' matches nvidia-t4"):
        device_figures(_ctx(tmp_path, JETSON, results), [rec])


def test_a_bundle_of_another_model_than_the_runs_is_refused(tmp_path, results, bundle):
    """The run was rebuilt after its bundle was written: the device timed another model."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [])
    graph.output.append(onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1]))
    onnx.save(onnx.helper.make_model(graph), tmp_path / "m.onnx")  # the rebuilt model
    edit_json(bundle / "bundle.json", source_onnx_sha256="0" * 64)
    rec = {**TRT_REC, "source": "m.onnx"}
    with pytest.raises(UserError, match="field 'source_onnx_sha256': the bundle in build/bundle"):
        device_figures(_ctx(tmp_path, JETSON, results), [rec])
    edit_json(bundle / "bundle.json", source_onnx_sha256=sha256_file(tmp_path / "m.onnx"))
    assert device_figures(_ctx(tmp_path, JETSON, results), [rec])["build/bundle"]["latency"]


def test_device_results_for_a_run_without_a_bundle_are_refused(tmp_path, results):
    built = {"engine": "onnxruntime", "precision": "int8", "status": "built", "path": "m.onnx"}
    with pytest.raises(UserError, match="field 'device_results': the run has no TensorRT"):
        device_figures(_ctx(tmp_path, "host", results), [built])


# --- results for another target are refused ------------------------------------------------


def test_bundle_for_another_target_is_refused(results, bundle):
    edit_json(bundle / "bundle.json", profile="nvidia-t4")
    with pytest.raises(
        UserError, match=r"bundle.json: field 'profile': the bundle is for nvidia-t4"
    ):
        read_device_results(results, bundle, JETSON)


def test_results_recording_another_profile_are_refused(results, bundle):
    edit_json(results / "device.json", profile="nvidia-t4", onnx_sha256="abc123")
    with pytest.raises(UserError, match=r"device.json: field 'profile': .* bundle for nvidia-t4"):
        read_device_results(results, bundle, JETSON)


def test_results_of_another_model_are_refused(results, bundle):
    edit_json(results / "device.json", profile=JETSON, onnx_sha256="fff000")
    with pytest.raises(UserError, match=r"device.json: field 'onnx_sha256'"):
        read_device_results(results, bundle, JETSON)


def test_results_from_another_device_are_refused(results, bundle):
    edit_json(results / "device.json", device="Tesla T4")
    with pytest.raises(UserError, match=r"field 'device': device 'Tesla T4' matches nvidia-t4"):
        read_device_results(results, bundle, JETSON)


def test_unrecognised_device_name_is_accepted(results, bundle):
    edit_json(results / "device.json", device="Seeed reComputer J3011")  # a carrier board's name
    assert read_device_results(results, bundle, JETSON)["latency"]["device"].startswith("Seeed")


@pytest.mark.parametrize(
    "device, profiles",
    [
        (ORIN_NANO, [JETSON]),
        ("NVIDIA Jetson AGX Orin Developer Kit", ["jetson-agx-orin-64gb"]),
        ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", ["jetson-orin-nx-16gb"]),
        ("Tesla T4", ["nvidia-t4"]),
        ("NVIDIA A10", ["nvidia-a10"]),
        ("NVIDIA A100-SXM4-80GB", ["nvidia-a100-80gb-sxm"]),
        ("NVIDIA H100 80GB HBM3", ["nvidia-h100-sxm"]),
        ("unknown", []),
    ],
)
def test_device_names_map_to_profiles(device, profiles):
    assert profiles_of_device(device) == profiles


# --- the coefficient of variation ----------------------------------------------------------


def test_noisy_device_timing_is_warned(results, bundle):
    dev = read_device_results(results, bundle, JETSON)  # 1..100 ms: cv 57 %
    (warning,) = dev["latency"]["warnings"]
    assert "cv 57.2% over 100 iterations exceeds 2.5%" in warning
    assert warning in dev["warnings"]  # the engine's too, so the console lists it
    md = render_markdown(report_with({"latency": dev["latency"], "warnings": dev["warnings"]}))
    assert md.count("cv 57.2% over 100 iterations") == 1  # listed once under Warnings


def test_steady_device_timing_has_no_warning(results, bundle):
    write_times(results, [1.0 + 0.01 * (i % 5) for i in range(200)])  # cv about 1.4 %
    dev = read_device_results(results, bundle, JETSON)
    assert dev["latency"]["cv"] < CV_LIMIT
    assert "warnings" not in dev["latency"] and dev["warnings"] == []


def test_fewer_iterations_than_the_bundle_asked_for_are_warned(results, bundle):
    write_times(results, [1.0 + 0.01 * (i % 5) for i in range(200)])  # steady: no cv warning
    edit_json(bundle / "bundle.json", iterations=1000)
    dev = read_device_results(results, bundle, JETSON)
    (warning,) = dev["warnings"]
    assert warning.startswith("times.json has 200 iterations, the bundle asked for at least 1000")
    edit_json(bundle / "bundle.json", iterations=200)
    assert read_device_results(results, bundle, JETSON)["warnings"] == []


def test_a_verify_without_device_results_reads_the_last_ones_again(tmp_path, results):
    """`kdc compress --resume` after a verify setting changed re-runs verify without
    --device-results: the ones `kdc verify` read last are read again (they dropped out of the
    report), or, where they no longer apply, said so."""
    from kdc.rundir import RunDir
    from kdc.stages.verify import _earlier_device_figures

    run, warned, logged = RunDir(tmp_path), [], []
    ctx = SimpleNamespace(
        run=run,
        profile=SimpleNamespace(name=JETSON),
        device_results=None,
        warn=warned.append,
        log=logged.append,
    )
    rec = {**TRT_REC, "source": "build/onnxruntime/model_int8.onnx"}
    assert _earlier_device_figures(ctx, [rec]) == {}  # none given before
    run.update_manifest(device_results={"path": str(results), "target": "nvidia-t4"})
    assert _earlier_device_figures(ctx, [rec]) == {}  # given for another target's verify
    run.update_manifest(device_results={"path": str(results), "target": JETSON})
    figures = _earlier_device_figures(ctx, [rec])
    assert figures["build/bundle"]["latency"]["on_target"] and "read again" in logged[0]
    shutil.rmtree(results)
    ctx.device_results = None
    assert _earlier_device_figures(ctx, [rec]) == {} and ctx.device_results is None
    assert "the device results read before no longer apply" in warned[0]


def test_an_engine_whose_outputs_are_not_finite_fails_device_parity(results, bundle):
    """parity.py writes NaN figures for an engine whose outputs overflowed (FP16): that is the
    failure the check exists for (exit 1), not a damaged file (exit 2)."""
    edit_json(results / "parity.json", cosine=float("nan"), max_abs=float("inf"), **{"pass": False})
    parity = read_device_results(results, bundle, JETSON)["parity"]
    assert parity["passed"] is False and "cosine" not in parity
    assert "the engine's outputs are not finite (max_abs, cosine NaN or Inf" in parity["error"]


@pytest.mark.parametrize("key", ["profile", "onnx_sha256"])
def test_results_that_name_no_profile_or_model_are_refused(bundle, results, key):
    """bench.sh records the bundle's profile and model hash: results without them (hand-made, or
    another tool's) cannot be checked against the run, so they are refused, not trusted."""
    device = json.loads((results / "device.json").read_text())
    (results / "device.json").write_text(json.dumps({**device, key: None}))
    with pytest.raises(UserError, match=rf"device.json: field '{key}': names no {key}"):
        read_device_results(results, bundle, JETSON)


def test_results_that_name_no_device_are_warned(results, bundle):
    write_times(results, [1.0 + 0.01 * (i % 5) for i in range(200)])
    edit_json(results / "device.json", device="unknown")
    (warning,) = read_device_results(results, bundle, JETSON)["warnings"]
    assert warning.startswith("device.json names no device")


def test_the_timing_protocol_is_what_the_bundle_ran(results, bundle):
    """A DLA bundle times without CUDA graphs; one written before that rule ran with them."""
    edit_json(bundle / "bundle.json", dla_core=0, bench_command=["trtexec", "--useSpinWait"])
    lat = read_device_results(results, bundle, JETSON)["latency"]
    assert lat["protocol"] == "trtexec --useSpinWait"
    edit_json(bundle / "bundle.json", bench_command=None)  # no record: the rule for its core
    protocol = read_device_results(results, bundle, JETSON)["latency"]["protocol"]
    assert "--useCudaGraph" not in protocol and "--noDataTransfers" in protocol


# --- a device timing is a latency object like a host one; its engine was built on the device ---

# REPORT.md: a measured latency object has these (warm-up as `warmup`, a count)
MEASURED_KEYS = {"device", "engine", "precision", "batch", "threads", "warmup", "iterations"}
MEASURED_KEYS |= {"p50_ms", "p90_ms", "p99_ms", "cv"}
BENCH_LOG = "[12/07/2025-10:00:01] [I] Warmup completed 412 queries over 500 ms\n"


def test_device_latency_has_the_keys_of_a_host_timing(results, bundle):
    """`threads` null (a GPU engine; no CPU thread count), and `warmup` the count trtexec logged
    beside the duration it warmed up for; no count is guessed where its log does not say."""
    from kdc.deploy.latency import measure_callable

    host = measure_callable(lambda: None, warmup=2, warmup_s=0, iterations=2, min_duration_s=0)
    lat = read_device_results(results, bundle, JETSON)["latency"]
    assert set(lat) >= MEASURED_KEYS
    assert lat["threads"] is None and "runs on the GPU" in lat["threads_note"]
    assert lat["warmup"] is None and lat["warmup_ms"] == 500  # no bench.log
    (results / "bench.log").write_text("[I] TensorRT v100300\n" + BENCH_LOG)
    lat = read_device_results(results, bundle, JETSON)["latency"]
    assert lat["warmup"] == 412 and lat["warmup_ms"] == 500
    assert type(lat["warmup"]) is type(host["warmup"]) is int  # a count of runs, as a host's
    edit_json(bundle / "bundle.json", dla_core=1)
    assert "DLA core 1" in read_device_results(results, bundle, JETSON)["latency"]["threads_note"]


def test_an_engine_the_device_built_and_timed_says_so(tmp_path, results, monkeypatch):
    """verify with --device-results: the bundle's engine is `built` on the device, without the build
    stage's "TensorRT is not installed" reason; it still ships, and report.md, the console and
    kdc check (against a baseline from before threads/warmup were recorded) read it."""
    from kdc.deploy.check import compare
    from kdc.deploy.junit import junit_xml
    from kdc.stages import verify
    from kdc.stages.report import mark_shipped

    (results / "bench.log").write_text(BENCH_LOG)
    (tmp_path / "m.onnx").write_bytes(b"model")
    predicted = {"kind": "predicted", "model": "roofline-v1", "p50_ms": 0.5}
    monkeypatch.setattr(verify, "_stand_in", lambda *a: {"metric": "accuracy", "value": 0.9})
    monkeypatch.setattr(verify, "predict", lambda *a, **k: dict(predicted))
    monkeypatch.setattr(verify, "_predicted_memory", lambda *a: {"kind": "predicted"})
    ctx = _ctx(tmp_path, JETSON, results)
    ctx.cfg = SimpleNamespace(build=SimpleNamespace(max_batch=None))
    reason = "TensorRT is not installed on this machine; build on the device with bundle/build.sh"
    rec = {**TRT_REC, "source": "m.onnx", "reason": reason}
    block = verify._remote_block(ctx, rec, None, device_figures(ctx, [rec])["build/bundle"])
    assert block["status"] == "built" and block["built_on"] == "device" and "reason" not in block
    assert block["note"].startswith("built by build/bundle/build.sh and timed by its bench.sh on")
    assert block["predicted_latency"] == predicted and block["latency"]["on_target"]
    assert mark_shipped([block], "int8", ["tensorrt"])[0]["ships"]

    baseline = report_with({"latency": {**block["latency"], "warmup_ms": 500}})
    for key in ("threads", "threads_note", "warmup"):  # as verify wrote it before
        del next(e for e in baseline["engines"] if "on_target" in e["latency"])["latency"][key]
    keep = ("status", "built_on", "note", "latency", "parity", "predicted_latency")
    report = report_with({k: block[k] for k in keep})
    del next(e for e in report["engines"] if e.get("built_on"))["reason"]
    md = render_markdown(report)
    assert any(ln.startswith("| tensorrt-int8 | built on device |") for ln in md.splitlines())
    assert "threads – (no CPU thread count: the TensorRT engine runs on the GPU" in md
    assert "warm-up 500 ms (412 runs)" in md
    assert "tensorrt-int8 is" not in md and "tensorrt-fp16 is bundle" in md
    console = Console(record=True, width=300)
    console.print(console_summary(report))
    text = console.export_text()
    assert "tensorrt-int8 [built on device]" in text and "tensorrt-int8 is" not in text
    rows = [r for r in compare(report, baseline) if r.metric.startswith("tensorrt-int8.latency")]
    assert rows and all(r.status == "pass" for r in rows), [r.message for r in rows]
    assert 'failures="0" errors="0" skipped="0"' in junit_xml(rows)


def test_results_of_another_build_of_the_same_model_are_refused(results, bundle):
    """The bundle rewritten for another batch (verify.batch), DLA core or build.max_batch holds
    the same model.onnx: results its earlier build.sh/bench.sh made would be labelled with the
    new bundle's batch and shapes. bench.sh records the commands it ran; other ones refuse."""
    commands = {
        "build_command": ["$TRTEXEC", "--onnx=model.onnx", "--saveEngine=model.plan"],
        "bench_command": ["$TRTEXEC", "--loadEngine=model.plan", "--shapes=input_ids:1x128"],
    }
    edit_json(bundle / "bundle.json", **commands)
    edit_json(results / "device.json", **commands)
    assert read_device_results(results, bundle, JETSON)["latency"]["batch"] == 1
    rebatched = ["$TRTEXEC", "--loadEngine=model.plan", "--shapes=input_ids:8x128"]
    edit_json(bundle / "bundle.json", batch=8, bench_command=rebatched)
    with pytest.raises(UserError, match=r"device.json: field 'bench_command': .*--shapes="):
        read_device_results(results, bundle, JETSON)
    edit_json(results / "device.json", build_command=None, bench_command=None)  # an older bench.sh
    assert read_device_results(results, bundle, JETSON)["latency"]["batch"] == 8


def test_a_bundle_whose_source_weights_changed_in_their_external_data_is_refused(
    tmp_path, results, bundle
):
    """A model over 2 GB keeps its weights in a data file: new weights there, the .onnx file
    unchanged, are another model than the bundle was made from."""
    import numpy as np

    from kdc.deploy.external_data import onnx_sha256

    w = onnx.numpy_helper.from_array(np.ones(4, np.float32), "w")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    node = onnx.helper.make_node("Add", ["x", "w"], ["y"])
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y], [w]))
    onnx.save(
        model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0
    )
    edit_json(bundle / "bundle.json", source_onnx_sha256=onnx_sha256(tmp_path / "m.onnx"))
    rec = {**TRT_REC, "source": "m.onnx"}
    assert device_figures(_ctx(tmp_path, JETSON, results), [rec])["build/bundle"]["latency"]
    data = tmp_path / "m.data"
    data.write_bytes(np.full(4, 2, np.float32).tobytes())
    with pytest.raises(UserError, match="field 'source_onnx_sha256'"):
        device_figures(_ctx(tmp_path, JETSON, results), [rec])
