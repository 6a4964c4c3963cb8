"""kdc calibrate --dla-core: a bundle that builds and times every engine on a DLA core, and the
fit of the profile's `dla` block to what it brings back. KDC_CONFIG_DIR points at tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdc.cli import app
from kdc.deploy import calibrate as C
from kdc.deploy import calibrate_bundle as B
from kdc.deploy import model_zoo as Z
from kdc.deploy.dla import check_dla_core, fit_dla, on_dla, predict_dla_ms
from kdc.deploy.estimate import onnx_kernels, predict_onnx
from kdc.errors import UserError
from kdc.profiles import calibration_path, load_profile

pytestmark = pytest.mark.usefixtures("config_dir")
TARGET = "jetson-agx-orin-64gb"
KNOWN = {  # a DLA unlike the shipped block in every fitted factor
    "compute_efficiency": 0.4,
    "layer_overhead_us": 25.0,
    "transition_us": 40.0,
    "fp16_tflops": 26.25 * 0.3,
}
ZOO = [
    Z.mlp([512, 2048, 512, 10], batch=32),
    Z.mlp([256, 256, 10]),
    Z.cnn([16, 32], 32),
    Z.cnn([32, 64, 128], 64),
    Z.cnn([24, 48, 96, 192], 96),
    Z.transformer(1, 64, seq=32),
    Z.transformer(2, 128, seq=64),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cal") / "orin-dla1"
    zoo = Z.models(ZOO, ["int8", "fp16"])
    return B.write_bundle("agx-orin", out, zoo=zoo, iterations=50, dla_core=1)


def _kernels(bundle: Path, row: dict) -> list:
    return onnx_kernels(
        bundle / "models" / row["file"],
        load_profile(TARGET),
        precision=row["precision"],
        batch=row["batch"],
        input_shapes=row["input_shapes"],
    )


def _export_times(bundle: Path, block: dict) -> None:
    """trtexec --exportTimes files as if every engine ran at what the DLA `block` predicts."""
    profile = load_profile(TARGET)
    known = profile.model_copy(update={"dla": profile.dla.model_copy(update=block)})
    (bundle / "results").mkdir(exist_ok=True)
    for r in Z.load_manifest(bundle / "models"):
        ms = predict_dla_ms(_kernels(bundle, r), known)["p50_ms"]
        rows = [{"latencyMs": ms, "computeMs": ms * 0.99, "inMs": 0.0} for _ in range(20)]
        (bundle / "results" / f"{r['name']}.json").write_text(json.dumps(rows))
    (bundle / "results" / "device.json").write_text('{"device": "Jetson AGX Orin (test)"}')


def test_the_bundle_builds_and_times_every_engine_on_the_core(bundle):
    rows = Z.load_manifest(bundle / "models")
    assert {r["precision"] for r in rows} == {"int8", "fp16"}  # DLA runs no fp32
    script = (bundle / "run_all.sh").read_text()
    builds = [line for line in script.splitlines() if "--saveEngine=" in line]
    benches = [line for line in script.splitlines() if "--loadEngine=" in line]
    assert len(builds) == len(benches) == len(rows)
    for line in builds:
        assert "--useDLACore=1" in line and "--allowGPUFallback" in line
    for line in benches:  # CUDA-graph capture fails on DLA engines
        assert "--useDLACore=1" in line and "--useCudaGraph" not in line
    assert json.loads((bundle / "calibration.json").read_text())["dla_core"] == 1
    readme = (bundle / "README.md").read_text()
    assert "DLA core 1" in readme and "without CUDA graphs" in readme


def test_the_fit_recovers_a_known_dla_and_predictions_use_it(bundle, config_dir):
    _export_times(bundle, KNOWN)
    gpu_before = load_profile(TARGET).latency_model
    res = CliRunner().invoke(app, ["calibrate", "--target", "agx-orin", "--from", str(bundle)])
    assert res.exit_code == 0, res.output
    summary = res.output.splitlines()[1]  # the factors fitted, not the peaks
    assert "compute_efficiency 0.40" in summary and "int8_tops" not in summary
    saved = yaml.safe_load(calibration_path(TARGET).read_text())
    assert "latency_model" not in saved  # the GPU's model stays the profile's
    assert saved["dla_calibration"]["dla_core"] == 1
    assert len(saved["dla_calibration"]["samples"]) == 14
    profile = load_profile(TARGET)
    assert profile.latency_model == gpu_before
    for k, v in KNOWN.items():
        assert getattr(profile.dla, k) == pytest.approx(v, rel=0.02), k
    assert profile.dla.int8_tops == 26.25  # a peak is never fitted
    where = "kdc calibrate on Jetson AGX Orin (test) (trtexec, DLA core 1)"
    assert profile.dla.source.startswith(where)
    assert "fitted compute_efficiency, layer_overhead_us, transition_us, fp16_tflops" in (
        profile.dla.source
    )
    row = Z.load_manifest(bundle / "models")[-1]
    path, precision = bundle / "models" / row["file"], row["precision"]
    shapes = row["input_shapes"]
    pred = predict_onnx(path, profile, precision=precision, input_shapes=shapes, dla_core=0)
    assert pred["calibrated_from"] == profile.dla.source
    timed = {r["name"]: r["measured_ms"] for r in saved["dla_calibration"]["samples"]}
    assert pred["p50_ms"] == pytest.approx(timed[row["name"]], rel=0.02)


def test_a_gpu_calibration_keeps_the_dla_fit_and_back(bundle, config_dir):
    _export_times(bundle, KNOWN)
    B.ingest_bundle("agx-orin", bundle)
    lm = load_profile(TARGET).latency_model.model_dump()
    same = {**lm, "source": "x: y"}
    assert C.save_calibration(load_profile(TARGET), same, [], where="t", meta={})[2] == []
    faster = {**same, "kernel_overhead_us": lm["kernel_overhead_us"] / 2}
    *_, notes = C.save_calibration(load_profile(TARGET), faster, [], where="t", meta={})
    assert len(notes) == 1 and "the DLA fit in" in notes[0]  # it costed the GPU's kernels
    assert f"kdc calibrate --target {TARGET} --from {bundle.resolve()}" in notes[0]
    profile = load_profile(TARGET)
    assert profile.latency_model.source.startswith("kdc calibrate on t at")
    assert profile.dla.compute_efficiency == pytest.approx(0.4, rel=0.02)
    B.ingest_bundle("agx-orin", bundle)  # a DLA refit keeps the GPU's
    assert load_profile(TARGET).latency_model.source.startswith("kdc calibrate on t at")


def _samples(bundle: Path, keep, block: dict | None = None, noise: float = 0.0) -> list:
    """(kernels, ms) of the bundle's models that `keep` keeps, timed as the DLA `block`
    predicts (times off by up to `noise`, alternately up and down)."""
    profile = load_profile(TARGET)
    known = profile.model_copy(update={"dla": profile.dla.model_copy(update=block or KNOWN)})
    rows = [r for r in Z.load_manifest(bundle / "models") if keep(r)]
    out = []
    for i, r in enumerate(rows):
        kernels = _kernels(bundle, r)
        ms = predict_dla_ms(kernels, known)["p50_ms"] * (1 + noise * (-1) ** i)
        out.append((kernels, ms))
    return out


def test_fit_dla_frees_only_what_the_samples_constrain(bundle):
    """CNNs and MLPs never switch to the GPU, and INT8 timings say nothing of FP16: those
    factors stay the profile's; FP16 timings alone fit the FP16 peak, not the efficiency
    measured at the published INT8 peak."""
    profile = load_profile(TARGET)
    int8 = _samples(bundle, lambda r: r["family"] != "transformer" and r["precision"] == "int8")
    block, _, fitted = fit_dla(int8, profile, "test")
    assert fitted == ["compute_efficiency", "layer_overhead_us"]
    assert block.compute_efficiency == pytest.approx(KNOWN["compute_efficiency"], rel=0.01)
    assert block.transition_us == profile.dla.transition_us
    assert block.fp16_tflops == profile.dla.fp16_tflops
    assert block.source.startswith("test; fitted compute_efficiency, layer_overhead_us: median")
    fp16 = _samples(bundle, lambda r: r["family"] != "transformer" and r["precision"] == "fp16")
    block, _, fitted = fit_dla(fp16, profile, "test")
    assert fitted == ["layer_overhead_us", "fp16_tflops"]
    assert block.compute_efficiency == profile.dla.compute_efficiency
    effective = KNOWN["fp16_tflops"] * KNOWN["compute_efficiency"]
    assert block.fp16_tflops * block.compute_efficiency == pytest.approx(effective, rel=0.01)


def test_a_factor_the_timings_do_not_pin_keeps_the_profiles_value(bundle):
    """Three small INT8 models 30 % off the model either way: the switch cost cannot be told
    from the noise, so it is not saved as fitted."""
    profile = load_profile(TARGET)
    small = {"mlp_w256-256-10_b1_int8", "cnn_c16-32_d1_i32_int8", "bert_l1_h64_s32_int8"}
    small |= {"mlp_w512-2048-512-10_b32_int8", "bert_l2_h128_s64_int8"}
    samples = _samples(bundle, lambda r: r["name"] in small, noise=0.3)
    block, _, fitted = fit_dla(samples, profile, "test")
    assert "transition_us" not in fitted
    assert block.transition_us == profile.dla.transition_us
    assert "kept from the profile (the timings do not pin them): transition_us" in block.source


def test_timings_without_a_dla_layer_fit_nothing(bundle):
    profile = load_profile(TARGET)
    samples = [([k for k in ks if not on_dla(k)], ms) for ks, ms in _samples(bundle, bool)]
    with pytest.raises(UserError, match="no timed model has a layer the DLA runs"):
        fit_dla(samples, profile, "test")


def test_dla_core_needs_a_bundle_and_a_target_with_that_core(tmp_path):
    res = CliRunner().invoke(
        app, ["calibrate", "--target", "jetson", "--bundle", str(tmp_path / "b"), "--dla-core", "0"]
    )
    assert res.exit_code == 2 and "'--dla-core'" in res.output and "no DLA core" in res.output
    args = ["calibrate", "--target", "agx-orin", "--bundle", str(tmp_path / "b")]
    res = CliRunner().invoke(app, [*args, "--dla-core", "2"])
    assert res.exit_code == 2 and "no core 2" in res.output, res.output
    res = CliRunner().invoke(app, ["calibrate", "--target", "agx-orin", "--dla-core", "0"])
    assert res.exit_code == 2 and "--dla-core goes with --bundle" in res.output
    assert not (tmp_path / "b").exists()


def test_a_bundle_with_a_damaged_core_number_is_refused(bundle, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    meta = json.loads((bundle / "calibration.json").read_text())
    (copy / "calibration.json").write_text(json.dumps({**meta, "dla_core": "one"}))
    with pytest.raises(UserError, match="dla_core is 'one', not a core number") as e:
        B.ingest_bundle("agx-orin", copy)
    assert e.value.field == "dla_core"
    (copy / "calibration.json").write_text(json.dumps({**meta, "dla_core": 5}))
    res = CliRunner().invoke(app, ["calibrate", "--target", "agx-orin", "--from", str(copy)])
    assert res.exit_code == 2 and "field '--dla-core'" not in res.output  # the bundle's
    assert f"{copy / 'calibration.json'}: field 'dla_core'" in " ".join(res.output.split())


def test_a_fit_with_no_more_timings_than_factors_is_warned(bundle, tmp_path):
    copy = tmp_path / "two"
    shutil.copytree(bundle, copy)
    _export_times(copy, KNOWN)
    rows = Z.load_manifest(copy / "models")
    cnns = [r["name"] for r in rows if r["family"] == "cnn" and r["precision"] == "int8"][:2]
    for times in (copy / "results").glob("*.json"):
        if times.stem not in (*cnns, "device"):
            times.unlink()
    res = CliRunner().invoke(app, ["calibrate", "--target", "agx-orin", "--from", str(copy)])
    assert res.exit_code == 0, res.output
    assert "warning: 2 timed models fit 2 factors (compute_efficiency, layer_overhead_us)" in (
        res.output
    )


def test_a_factor_run_into_its_bound_keeps_the_profiles_value(bundle):
    """Timings 4x faster than any efficiency up to 1 explains: not a credible efficiency."""
    profile = load_profile(TARGET)
    big = lambda r: r["family"] == "cnn" and r["precision"] == "int8"  # noqa: E731
    samples = [(k, ms / 4) for k, ms in _samples(bundle, big)]
    block, _, fitted = fit_dla(samples, profile, "test")
    assert "compute_efficiency" not in fitted
    assert block.compute_efficiency == profile.dla.compute_efficiency


def test_a_bundle_holding_device_timings_is_not_overwritten(bundle, tmp_path):
    copy = tmp_path / "timed"
    shutil.copytree(bundle, copy)
    _export_times(copy, KNOWN)
    with pytest.raises(UserError, match="holds a device's timings") as e:
        B.write_bundle("agx-orin", copy, zoo=[Z.models(ZOO, ["int8"])[0]], dla_core=0)
    assert "--from" in e.value.fix and any((copy / "results").glob("*.json"))


def test_timings_from_an_unnamed_device_say_so(bundle, tmp_path):
    copy = tmp_path / "unnamed"
    shutil.copytree(bundle, copy)
    _export_times(copy, KNOWN)
    (copy / "results" / "device.json").unlink()
    B.ingest_bundle("agx-orin", copy)
    source = load_profile(TARGET).dla.source
    assert source.startswith("kdc calibrate on an unnamed device (no name in results/device.json)")


def test_a_damaged_device_calibration_says_how_to_fit_it_again(config_dir):
    path = calibration_path(TARGET)
    path.parent.mkdir(parents=True)
    path.write_text("dla: [1]\n")
    with pytest.raises(UserError, match="calibration file is corrupt") as e:
        load_profile(TARGET)
    assert e.value.fix.startswith("delete the file")
    assert (
        f"kdc calibrate --target {TARGET} --bundle DIR" in e.value.fix and "--from" in e.value.fix
    )


def test_no_dla_core_on_a_target_without_tensorrt_says_drop_it(tmp_path):
    with pytest.raises(UserError, match="has no DLA core") as e:
        check_dla_core(load_profile("host"), 0)
    assert e.value.fix.startswith("drop it, or target a Jetson") and "GPU" not in e.value.fix
