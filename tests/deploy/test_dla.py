"""A TensorRT engine built for a Jetson DLA core (build.dla_core): its latency model
(roofline-v1+dla, kdc.deploy.dla) against the published DLA timings it is fitted to, the
placement of a transformer's kernels, and what is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from tiny import cnn_config, config_of, write_yaml
from typer.testing import CliRunner

from kdc.cli import app
from kdc.deploy import trtexec
from kdc.deploy.dla import check_dla_core
from kdc.deploy.estimate import predict_architecture
from kdc.deploy.tensorrt import BuildOptions
from kdc.errors import UserError
from kdc.profiles import load_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from fit_profiles import resnet34_backbone, resnet50  # noqa: E402

runner = CliRunner()
BERT = {
    "family": "transformer",
    "num_hidden_layers": 2,
    "hidden_size": 128,
    "num_attention_heads": 2,
    "intermediate_size": 512,
    "vocab_size": 1000,
    "num_labels": 2,
}


@pytest.mark.parametrize(
    "target, model, batch, images_per_s, rel",  # both DLAs (NVIDIA/Deep-Learning-Accelerator-SW)
    [
        ("jetson-agx-orin-64gb", resnet50, 2, 2037, 0.12),  # the fit's residuals: -12 % to +9 %
        ("jetson-agx-orin-64gb", resnet34_backbone, 1, 285, 0.06),
        # NX: AGX's 15 W figures (its DLA peak, per the README), with NX's half bandwidth
        ("jetson-orin-nx-16gb", resnet50, 2, 1072, 0.16),
        ("jetson-orin-nx-16gb", resnet34_backbone, 1, 121, 0.06),
    ],
)
def test_the_shipped_dla_blocks_predict_the_published_figures(
    target, model, batch, images_per_s, rel
):
    pred = predict_architecture(
        model(), load_profile(target), precision="int8", batch=batch, dla_core=0
    )
    assert pred["p50_ms"] == pytest.approx(batch / (images_per_s / 2) * 1e3, rel=rel)
    assert pred["model"] == "roofline-v1+dla" and pred["dla_core"] == 0
    assert pred["gpu_fallback_kernels"] == 0 and pred["transitions"] == 0
    assert "Deep-Learning-Accelerator-SW" in pred["calibrated_from"]


def test_a_transformer_falls_back_to_the_gpu_and_pays_for_the_switches():
    agx = load_profile("agx-orin")
    shapes = {"input_ids": [1, 64]}
    gpu = predict_architecture(BERT, agx, precision="int8", input_shapes=shapes)
    dla = predict_architecture(BERT, agx, precision="int8", input_shapes=shapes, dla_core=1)
    assert dla["gpu_fallback_kernels"] > 0 and dla["dla_kernels"] > 0  # attention on the GPU
    assert dla["transitions"] >= 2 * BERT["num_hidden_layers"]
    assert dla["p50_ms"] > gpu["p50_ms"]  # DLA offloads the GPU; it is not faster
    assert dla["predictor_sha256"] != gpu["predictor_sha256"]


def test_explain_says_which_kernels_fall_back_and_what_the_switches_cost():
    agx = load_profile("agx-orin")
    pred = predict_architecture(
        BERT, agx, precision="int8", input_shapes={"input_ids": [1, 64]}, dla_core=0, explain=True
    )
    rows = {r["group"]: r for r in pred["breakdown"]}
    assert "attention (GPU)" in rows and "gemm (DLA)" in rows
    assert rows["DLA<->GPU switches"]["count"] == pred["transitions"]
    total = sum(r["ms"] for r in pred["breakdown"])
    assert total == pytest.approx(pred["p50_ms"], rel=1e-3)  # the parts add up to the whole


@pytest.mark.parametrize(
    "target, core, said",
    [
        ("jetson-orin-nano-8gb", 0, "has no DLA core"),
        ("jetson-agx-orin-64gb", 2, "has 2 DLA cores, numbered from 0: no core 2"),
    ],
)
def test_a_missing_dla_core_is_refused(target, core, said):
    with pytest.raises(UserError, match=said) as e:
        check_dla_core(load_profile(target), core)
    assert e.value.field == "build.dla_core"


def test_a_profile_with_dla_cores_but_no_dla_block_cannot_predict_them():
    agx = load_profile("agx-orin").model_copy(update={"dla": None})
    with pytest.raises(UserError, match="no `dla` latency block") as e:
        predict_architecture(
            BERT, agx, precision="int8", input_shapes={"input_ids": [1, 64]}, dla_core=0
        )
    assert e.value.field == "dla"


def test_trtexec_builds_and_times_on_the_dla_core():
    opts = BuildOptions(precision="int8", dla_core=1)
    build = trtexec.build_command("m.onnx", "m.plan", opts, "10.3")
    assert {"--useDLACore=1", "--allowGPUFallback"} <= set(build)
    bench = trtexec.bench_command("m.plan", {}, dla_core=1)
    assert "--useDLACore=1" in bench  # a DLA engine runs on the core it names
    assert "--useCudaGraph" not in bench  # its capture fails there (NVIDIA/TensorRT#3524)
    assert "--useCudaGraph" in trtexec.bench_command("m.plan", {})
    assert not any("DLA" in a for a in trtexec.bench_command("m.plan", {}))


def test_kdc_estimate_predicts_on_a_dla_core(tmp_path):
    from stand_in_device import tiny_model

    model = tiny_model(tmp_path / "m.onnx")
    args = ["estimate", str(model), "--precision", "fp16"]
    res = runner.invoke(app, [*args, "--target", "agx-orin", "--dla-core", "1"])
    assert res.exit_code == 0 and "roofline-v1+dla" in res.output, res.output
    assert "DLA core 1:" in res.output
    plain = runner.invoke(app, ["estimate", str(model), "--target", "agx-orin", "--dla-core", "0"])
    assert plain.exit_code == 0 and "fp16" in plain.output, plain.output  # a float graph's
    res = runner.invoke(app, [*args, "--target", "jetson", "--dla-core", "0"])
    assert res.exit_code == 2 and "--dla-core" in res.output and "no DLA core" in res.output


def _config(tmp_path, cnn_project, **build) -> Path:
    cfg = config_of(cnn_project)
    cfg["build"] = build
    return write_yaml(tmp_path / "model.yaml", cfg)


@pytest.mark.parametrize(
    "build, target, field",
    [
        ({"dla_core": 0}, "jetson-orin-nano-8gb", "build.dla_core"),
        ({"dla_core": 5}, "agx-orin", "build.dla_core"),
        ({"dla_core": 0, "max_batch": 4}, "agx-orin", "build.max_batch"),
    ],
)
def test_bad_dla_settings_exit_2_naming_the_field(cnn_project, tmp_path, build, target, field):
    path = _config(tmp_path, cnn_project, **build)
    res = runner.invoke(app, ["compress", str(path), "--target", target, "--dry-run"])
    assert res.exit_code == 2 and field in res.output, res.output
    assert "Traceback" not in res.output


def test_dla_with_fp32_or_max_batch_on_host_is_only_warned(cnn_project, tmp_path):
    cfg = yaml.safe_load(_config(tmp_path, cnn_project, dla_core=0, max_batch=4).read_text())
    cfg["quantize"] = {**cfg.get("quantize", {}), "precision": "fp32"}
    path = write_yaml(tmp_path / "model.yaml", cfg)
    res = runner.invoke(app, ["compress", str(path), "--target", "host", "--dry-run"])
    assert res.exit_code == 0 and "build.dla_core not used" in " ".join(res.output.split())


def test_dla_with_fp32_builds_the_fp16_engine_it_ships(cnn_project, tmp_path):
    """An FP32 student on a TensorRT target ships its engine built FP16 (built_at), which DLA
    runs: preflight no longer refuses it (it still refuses the DLA core of a target without
    one, whatever the precision)."""
    cfg = yaml.safe_load(_config(tmp_path, cnn_project, dla_core=0).read_text())
    cfg["quantize"] = {**cfg.get("quantize", {}), "precision": "fp32"}
    path = write_yaml(tmp_path / "model.yaml", cfg)
    res = runner.invoke(app, ["compress", str(path), "--target", "agx-orin", "--dry-run"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compress", str(path), "--target", "jetson", "--dry-run"])
    assert res.exit_code == 2 and "build.dla_core" in res.output, res.output


def test_a_boolean_dla_core_is_refused(cnn_project, tmp_path):
    path = _config(tmp_path, cnn_project, dla_core=True)
    res = runner.invoke(app, ["compress", str(path), "--target", "agx-orin", "--dry-run"])
    assert res.exit_code == 2 and "build.dla_core" in res.output, res.output


def test_dla_on_a_target_without_tensorrt_is_warned_unused(cnn_project, tmp_path):
    path = _config(tmp_path, cnn_project, dla_core=0)
    res = runner.invoke(app, ["compress", str(path), "--target", "host", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "build.dla_core not used" in " ".join(res.output.split())


@pytest.mark.slow
def test_the_report_keeps_the_warning_that_dla_core_went_unused(tmp_path):
    cfg = cnn_config(weights=None)
    cfg["build"] = {"dla_core": 0}
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    res = runner.invoke(app, ["compress", str(path), "--target", "host", "--out", str(run), "-q"])
    assert res.exit_code in (0, 1), res.output
    report = json.loads((run / "report.json").read_text())
    assert any(w.startswith(f"{path}: build.dla_core not used") for w in report["warnings"])
    assert "build.dla_core not used" in (run / "report.md").read_text()


@pytest.mark.slow
def test_compress_for_a_dla_core_bundles_and_predicts_for_it(tmp_path, monkeypatch):
    cfg = cnn_config(weights=None)
    cfg["build"] = {"dla_core": 0}  # (core 0: a setting that is falsy)
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # the config named relative to where compress ran
    args = ["compress", "model.yaml", "--target", "agx-orin", "--out", str(run)]
    res = runner.invoke(app, args)
    monkeypatch.chdir(tmp_path.parent)
    assert res.exit_code in (0, 1), res.output  # (accuracy of an untrained teacher aside)
    report = json.loads((run / "report.json").read_text())
    (trt,) = [e for e in report["engines"] if e["engine"] == "tensorrt"]
    assert trt["status"] == "bundle" and trt["latency"]["model"] == "roofline-v1+dla"
    assert trt["latency"]["dla_core"] == 0 and trt["latency"]["kind"] == "predicted"
    bundle = run / trt["path"]
    assert json.loads((bundle / "bundle.json").read_text())["dla_core"] == 0
    assert "--useDLACore=0" in (bundle / "build.sh").read_text()
    assert "--useDLACore=0" in (bundle / "bench.sh").read_text()
    assert "Built for DLA core 0" in (bundle / "README.md").read_text()
    md = (run / "report.md").read_text()
    assert "DLA core 0 (" in md and "roofline-v1+dla" in md
    assert "ms p50 on DLA core 0" in md  # in the engines table, beside the figure
    budget = next(c for c in report["constraints"] if c["name"] == "latency_p99_ms")
    assert budget["engine"] == "tensorrt-int8 on DLA core 0"
    for other in (["verify", str(run)], ["bundle", str(run)]):  # a target without the core
        res = runner.invoke(app, [*other, "--target", "jetson"])
        assert res.exit_code == 2 and "build.dla_core" in res.output, res.output
        assert "no DLA core" in res.output
        assert str(path) in " ".join(res.output.split())  # the config, wherever kdc runs
