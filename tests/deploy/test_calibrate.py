"""kdc calibrate: the generated model set, device bundles and their exportTimes, host timing,
and calibration files that load_profile picks up. KDC_CONFIG_DIR points at tmp_path throughout."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnx
import pytest
import yaml
from typer.testing import CliRunner

from kdc.cli import app
from kdc.deploy import calibrate as C
from kdc.deploy import calibrate_bundle as B
from kdc.deploy import model_zoo as Z
from kdc.deploy.estimate import onnx_kernels, predict_kernels_ms
from kdc.deploy.graph_cost import analyze_onnx
from kdc.errors import UserError
from kdc.profiles import calibration_path, load_profile, profiles_dir

pytestmark = pytest.mark.usefixtures("config_dir")
KNOWN = {
    "kernel_overhead_us": 3.0,
    "compute_efficiency": 0.5,
    "memory_efficiency": 0.6,
    "fp16_compute_efficiency": 0.35,
    "int8_compute_efficiency": 0.25,
}
SMALL = [
    Z.mlp([1024, 4096, 1024], batch=256),
    Z.mlp([512, 2048, 512, 10], batch=32),
    Z.mlp([256, 256, 10]),
    Z.cnn([16, 32], 32),
    Z.cnn([32, 64, 128], 64),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A calibration bundle for the Jetson Orin Nano with 10 small float/INT8 models."""
    out = tmp_path_factory.mktemp("cal") / "jetson-calibration"
    return B.write_bundle("jetson", out, zoo=Z.models(SMALL, ["fp16", "int8"]), iterations=50)


def test_sets_are_disjoint_and_span_the_ranges():
    cal, ev = Z.calibration_set(), Z.evaluation_set()
    key = lambda m: json.dumps(m.arch, sort_keys=True)  # noqa: E731
    assert not {key(m) for m in cal} & {key(m) for m in ev}
    assert len({m.name for m in [*cal, *ev]}) == len(cal) + len(ev)
    assert len(ev) >= 40 and {m.precision for m in ev} == {"fp32", "int8"}
    bert = [m.arch for m in ev if m.family == "transformer"]
    assert {a["max_length"] for a in bert} == {128}
    assert min(a["num_hidden_layers"] for a in bert) == 1
    assert max(a["num_hidden_layers"] for a in bert) == 12
    assert {min(a["hidden_size"] for a in bert), max(a["hidden_size"] for a in bert)} == {128, 768}
    assert {m.family for m in ev} == {"transformer", "cnn"}
    assert all(m.batch == 1 for m in ev)
    assert len(Z.calibration_set(quick=True)) == 3


def test_padded_transformers_share_their_graph_and_mask_the_tail(tmp_path):
    zoo = Z.models([Z.transformer(1, 32, seq=16), Z.mlp([8, 4])], ["fp32"], paddings=(0.0, 0.5))
    assert [m.name for m in zoo] == [
        "bert_l1_h32_s16_fp32",
        "bert_l1_h32_s16_fp32_pad50",
        "mlp_w8-4_b1_fp32",
    ]
    rows = Z.generate(zoo, tmp_path)
    assert rows[0]["file"] == rows[1]["file"] and rows[1]["padding"] == 0.5
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    mask = Z.inputs_for(Z.zoo_model(rows[1]))["attention_mask"]
    assert mask.tolist() == [[1] * 8 + [0] * 8]
    assert Z.inputs_for(zoo[0])["attention_mask"].all()
    host = {m.name for m in Z.calibration_set(paddings=Z.HOST_PADDINGS)}
    assert "bert_l1_h192_s128_int8_pad60" in host and not any(
        "mlp" in n and "pad" in n for n in host
    )


def test_cls_only_zoo_transformer_keeps_the_logits(tmp_path):
    from kdc.deploy.onnxruntime import make_session, run_session

    full, cls = (
        Z.transformer(2, 64, seq=16, heads=4),
        Z.transformer(2, 64, seq=16, heads=4, cls_only=True),
    )
    zoo = Z.models([full, cls], ["fp32"], paddings=(0.5,))
    assert [m.name for m in zoo] == [
        "bert_l2_h64_s16_a4_fp32_pad50",
        "bert_l2_h64_s16_a4_cls_fp32_pad50",
    ]
    rows = Z.generate(zoo, tmp_path)
    x = Z.inputs_for(zoo[0])
    out = [run_session(make_session(tmp_path / r["file"]), x) for r in rows]
    assert abs(out[0] - out[1]).max() < 1e-4  # same weights, only [CLS] read by the head
    flops = [
        sum(
            k.flops
            for k in analyze_onnx(tmp_path / r["file"], input_shapes=zoo[0].input_shapes).kernels
        )
        for r in rows
    ]
    assert flops[1] < 0.75 * flops[0]


def test_zoo_transformer_graph_is_fused_like_a_trained_one(tmp_path):
    """Non-zero biases survive export, so ORT fuses the FFN's bias and GELU as in a real model."""
    rows = Z.generate(Z.models([Z.transformer(1, 64, seq=16)], ["fp32"]), tmp_path)
    ops = {n.op_type for n in onnx.load(tmp_path / rows[0]["file"]).graph.node}
    assert "BiasGelu" in ops


def test_zoo_keeps_models_of_its_recipe_and_remakes_older_ones(tmp_path):
    zoo = Z.models([Z.mlp([16, 16, 4])], ["int8"])
    rows = Z.generate(zoo, tmp_path)
    path = tmp_path / rows[0]["file"]
    path.write_bytes(b"kept")  # a file generate must not touch while the recipe matches
    Z.generate(zoo, tmp_path)
    assert path.read_bytes() == b"kept"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["recipe"] == Z.RECIPE
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "recipe": Z.RECIPE - 1}))
    Z.generate(zoo, tmp_path)
    assert path.read_bytes() != b"kept"  # made again under the current recipe


def test_bundle_has_models_manifest_and_a_valid_script(bundle):
    rows = Z.load_manifest(bundle / "models")
    assert len(rows) == 10 and {r["precision"] for r in rows} == {"fp16", "int8"}
    assert all((bundle / "models" / r["file"]).is_file() for r in rows)
    script = (bundle / "run_all.sh").read_text()
    assert subprocess.run(["bash", "-n", str(bundle / "run_all.sh")]).returncode == 0
    for r in rows:
        assert f"--exportTimes=results/{r['name']}.json" in script
        assert f"--saveEngine=engines/{r['name']}.plan" in script
    builds = [ln for ln in script.splitlines() if "--saveEngine" in ln]
    assert sum("--int8" in ln for ln in builds) == 5 and script.count("--useCudaGraph") == 10
    # TensorRT 10 flags: stops on TensorRT 11's trtexec with the fix, as build.sh does
    assert (
        "110000" in script and f"kdc calibrate --target that.yaml --bundle {bundle.name}" in script
    )
    assert (
        "kdc calibrate --target jetson-orin-nano-8gb --from" in (bundle / "README.md").read_text()
    )


def _export_times(bundle: Path, lm: dict, skip: str | None = None) -> None:
    """Write trtexec --exportTimes files as if every model ran at the latency `lm` predicts."""
    profile = load_profile("jetson")
    (bundle / "results").mkdir(exist_ok=True)
    for r in Z.load_manifest(bundle / "models"):
        if r["name"] == skip:
            continue
        kernels = onnx_kernels(
            bundle / "models" / r["file"],
            profile,
            precision=r["precision"],
            batch=r["batch"],
            input_shapes=r["input_shapes"],
        )
        ms = predict_kernels_ms(kernels, profile, lm)
        rows = [{"latencyMs": ms, "computeMs": ms * 0.99, "inMs": 0.0} for _ in range(20)]
        (bundle / "results" / f"{r['name']}.json").write_text(json.dumps(rows))
    (bundle / "results" / "device.json").write_text('{"device": "Jetson Orin Nano (test)"}')


def test_from_bundle_recovers_known_factors_and_load_profile_uses_them(bundle, config_dir):
    skipped = Z.load_manifest(bundle / "models")[2]["name"]
    _export_times(bundle, KNOWN, skip=skipped)
    res = CliRunner().invoke(app, ["calibrate", "--target", "jetson", "--from", str(bundle)])
    assert res.exit_code == 0, res.output
    assert f"no timing for {skipped}" in res.output
    path = calibration_path("jetson-orin-nano-8gb")
    assert path.is_relative_to(config_dir) and path.is_file()
    saved = yaml.safe_load(path.read_text())
    assert len(saved["samples"]) == 9 and saved["missing"] == [skipped]
    lm = load_profile("jetson").latency_model
    assert lm.source.startswith("kdc calibrate on Jetson Orin Nano (test) (trtexec) at ")
    assert ", 9 models; " in lm.source
    kept = lm.source.split("kept from profile:")[-1] if "kept" in lm.source else ""
    for k, v in KNOWN.items():
        if k not in kept:
            assert getattr(lm, k) == pytest.approx(v, rel=0.02), k
    assert lm.fp16_compute_efficiency == pytest.approx(0.35, rel=0.02)
    assert lm.int8_compute_efficiency == pytest.approx(0.25, rel=0.02)
    for s in saved["samples"]:
        assert s["predicted_ms"] == pytest.approx(s["measured_ms"], rel=0.01)


def test_a_quick_device_bundle_never_replaces_a_full_fit(bundle, config_dir, tmp_path):
    import shutil

    _export_times(bundle, KNOWN)
    assert C.calibrate("jetson", from_dir=bundle)["path"].is_file()  # a full fit saved
    full = calibration_path("jetson-orin-nano-8gb").read_text()
    quick = shutil.copytree(bundle, tmp_path / "quick")
    meta = json.loads((quick / "calibration.json").read_text())
    (quick / "calibration.json").write_text(json.dumps({**meta, "quick": True}))
    with pytest.raises(UserError, match="would replace it") as e:
        C.calibrate("jetson", from_dir=quick)
    assert "without --quick" in e.value.fix
    assert calibration_path("jetson-orin-nano-8gb").read_text() == full
    calibration_path("jetson-orin-nano-8gb").unlink()  # with no full fit, a smoke test may save
    C.calibrate("jetson", from_dir=quick)
    assert yaml.safe_load(calibration_path("jetson-orin-nano-8gb").read_text())["quick"] is True


def test_from_needs_two_timed_models(tmp_path, bundle):
    empty = tmp_path / "b"
    (empty / "models").mkdir(parents=True)
    for name in ("models/manifest.json", "calibration.json"):
        (empty / name).write_text((bundle / name).read_text())
    with pytest.raises(UserError, match="0 timed models"):
        C.calibrate("jetson", from_dir=empty)
    with pytest.raises(UserError, match="nothing: directory not found"):
        C.calibrate("jetson", from_dir=tmp_path / "nothing")


def test_a_bundle_of_another_target_or_device_is_refused(bundle, config_dir):
    """A Jetson bundle's timings never become the T4's model; a fit far off its own timings
    is saved with a warning naming how to go back."""
    _export_times(bundle, KNOWN)
    with pytest.raises(UserError, match="written for jetson-orin-nano-8gb, not nvidia-t4") as e:
        C.calibrate("t4", from_dir=bundle)
    assert e.value.field == "target" and "pass --target jetson-orin-nano-8gb" in e.value.fix
    (bundle / "results" / "device.json").write_text('{"device": "Tesla T4"}')
    with pytest.raises(
        UserError, match="device .Tesla T4. matches nvidia-t4, not jetson-orin-nano-8gb"
    ):
        C.calibrate("jetson", from_dir=bundle)
    assert not calibration_path("nvidia-t4").exists()
    assert not calibration_path("jetson-orin-nano-8gb").exists()
    for times in (bundle / "results").glob("*.json"):  # every model at one latency: no fit
        if times.name != "device.json":
            times.write_text(json.dumps([{"latencyMs": 0.11, "computeMs": 0.1}] * 20))
    (bundle / "results" / "device.json").write_text('{"device": "Jetson Orin Nano (test)"}')
    cut = sorted((bundle / "results").glob("*.json"))[0]
    cut.write_text('[{"latencyMs": 0.1')  # a model whose run was cut short: skipped
    res = CliRunner().invoke(app, ["calibrate", "--target", "jetson", "--from", str(bundle)])
    assert res.exit_code == 0, res.output
    assert f"warning: results/{cut.name}: not a trtexec exportTimes JSON" in res.output
    assert "warning: the fit predicts its own timings with a median |error| of" in res.output
    path = calibration_path("jetson-orin-nano-8gb")
    assert f"remove `latency_model` from {path}" in " ".join(res.output.split())


def test_unreachable_targets_and_conflicting_options_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cannot time nvidia-t4 from this machine"):
        C.calibrate("t4")
    with pytest.raises(UserError, match="exclude each other"):
        C.calibrate("t4", bundle=tmp_path / "a", from_dir=tmp_path / "b")
    with pytest.raises(UserError, match="no TensorRT version"):
        C.calibrate("host", bundle=tmp_path / "a")
    res = CliRunner().invoke(app, ["calibrate", "--target", "t4"])
    assert res.exit_code == 2 and "--bundle DIR" in res.output
    (tmp_path / "notes.txt").write_text("mine\n")
    for path in (tmp_path / "notes.txt", tmp_path):  # a file; a directory of the user's
        with pytest.raises(UserError, match="--bundle'.*not an earlier calibration bundle"):
            C.calibrate("jetson", bundle=path)
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    res = CliRunner().invoke(app, ["calibrate", "--target", "host", "--threads", "0"])
    assert res.exit_code == 2 and "'--threads'" in res.output, res.output
    assert not calibration_path("host").exists()
    # a CPU server's own profile (no TensorRT): --bundle and plain --target pointed at each other
    doc = yaml.safe_load((profiles_dir() / "nvidia-t4.yaml").read_text())
    doc.update(name="xeon-box", aliases=[], kind="cpu")
    doc["runtime"].update(engines=["onnxruntime"], tensorrt=None, precisions=["fp32", "int8"])
    own = tmp_path / "xeon.yaml"
    own.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="run kdc on that machine with --target host"):
        C.calibrate(str(own))


def test_every_profile_picks_up_its_calibration_file(config_dir):
    before = load_profile("t4").latency_model
    path = calibration_path("nvidia-t4")
    path.parent.mkdir(parents=True)
    lm = {**KNOWN, "kind_efficiency": {"fp16_conv": 0.3}, "source": "calibrated on T4 (test)"}
    path.write_text(yaml.safe_dump({"latency_model": lm, "samples": []}))
    after = load_profile("nvidia-t4").latency_model
    assert after.source == "calibrated on T4 (test)" and after.kernel_overhead_us == 3.0
    assert after.kind_efficiency == {"fp16_conv": 0.3}
    assert before.source != after.source
    path.write_text("latency_model: {compute_efficiency: 7}\n")
    with pytest.raises(UserError, match="calibration file is corrupt") as e:
        load_profile("t4")
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (b"machine: caf\xe9\n", None),
        (b"- 1\n", None),
        ({"bandwidth_gbps": "fast"}, "bandwidth_gbps"),
        ({"bandwidth_gbps": [1]}, "bandwidth_gbps"),
        (
            {"latency_model": {**KNOWN, "compute_efficiency": [1]}},
            "latency_model.compute_efficiency",
        ),
        ({"latency_model": {**KNOWN, "kind_efficiency": "x"}}, "latency_model.kind_efficiency"),
        ({"latency_model": None}, "latency_model"),  # a DLA fit alone has `dla`
        ({"dla": {"int8_tops": 1.0}}, "dla.fp16_tflops"),
    ],
)
def test_a_damaged_calibration_file_names_itself_and_the_field(damage, field):
    """Bytes replace the file; a dict overrides fields of a valid one."""
    path = calibration_path("host")
    path.parent.mkdir(parents=True)
    if isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        bandwidth = load_profile("host").memory.bandwidth_gbps
        path.write_text(
            yaml.safe_dump(
                {"bandwidth_gbps": bandwidth, "latency_model": {**KNOWN, "source": "a fit"}}
                | damage
            )
        )
    with pytest.raises(UserError, match="calibration file is corrupt") as e:
        load_profile("host")
    assert e.value.source == str(path) and e.value.field == field
    assert "kdc calibrate --target host" in e.value.fix and "delete" in e.value.fix
    res = CliRunner().invoke(app, ["profiles", "show", "host"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output


def test_quick_host_calibration_saves_what_host_profile_reads(config_dir):
    res = CliRunner().invoke(app, ["calibrate", "--target", "host", "--quick", "--threads", "1"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load(calibration_path("host").read_text())
    assert len(saved["samples"]) == 3 and saved["threads"] == 1
    assert saved["statistic"] == "cpu_ms"
    assert all(s["measured_ms"] > 0 and s["cpu_ms"] > 0 for s in saved["samples"])
    lm = load_profile("host").latency_model
    assert lm.source.startswith("kdc calibrate on ") and ", 3 models; " in lm.source
    assert lm.source == saved["latency_model"]["source"]
    assert lm.kernel_overhead_us == saved["latency_model"]["kernel_overhead_us"]
    # a smoke test may replace a smoke test, never a full fit
    res = CliRunner().invoke(app, ["calibrate", "--target", "host", "--quick", "--threads", "1"])
    assert res.exit_code == 0, res.output
    calibration_path("host").write_text(yaml.safe_dump({**saved, "quick": False}))
    res = CliRunner().invoke(app, ["calibrate", "--target", "host", "--quick", "--threads", "1"])
    assert res.exit_code == 2 and "a full calibration of host is saved in" in res.output
    assert "drop --quick" in res.output  # and the full fit is left as it was
    assert yaml.safe_load(calibration_path("host").read_text()) == {**saved, "quick": False}
    calibration_path("host").write_text(yaml.safe_dump(saved))
    # a host calibration fitted under another assumed bandwidth (older kdc) is refused, not misread
    assert saved["bandwidth_gbps"] == load_profile("host").memory.bandwidth_gbps
    del saved["bandwidth_gbps"]
    calibration_path("host").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match="assumed bandwidth of 20 GB/s") as e:
        load_profile("host")
    assert "kdc calibrate --target host" in e.value.fix


def test_a_profile_copy_may_be_calibrated_on_its_builtins_device(bundle, config_dir, tmp_path):
    """A copy of the Jetson profile (another power mode, say) timed on an Orin Nano: the device
    name matches the built-in profile, which is no reason to refuse the copy."""
    doc = yaml.safe_load((profiles_dir() / "jetson-orin-nano-8gb.yaml").read_text())
    doc.update(name="my-orin-15w", aliases=[])
    own = tmp_path / "my-orin.yaml"
    own.write_text(yaml.safe_dump(doc))
    _export_times(bundle, KNOWN)
    meta = json.loads((bundle / "calibration.json").read_text())
    (bundle / "calibration.json").write_text(json.dumps({**meta, "target": "my-orin-15w"}))
    (bundle / "results" / "device.json").write_text(
        '{"device": "NVIDIA Jetson Orin Nano Developer Kit"}'
    )
    assert C.calibrate(str(own), from_dir=bundle)["path"] == calibration_path("my-orin-15w")
    # its peaks edited after the fit: the fitted efficiencies no longer mean what they did
    doc["compute"]["int8_tops"] *= 2
    own.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="other compute peaks than the profile's") as e:
        load_profile(str(own))
    assert e.value.field == "compute" and f"--target {own} --bundle DIR" in e.value.fix


def test_a_custom_profiles_commands_name_its_yaml(config_dir, tmp_path, monkeypatch):
    """A custom profile is loaded by path only: the bundle's next step and the refit advice
    named it (`--target my-agx`), which `kdc calibrate` then called an unknown target."""
    doc = yaml.safe_load((profiles_dir() / "jetson-orin-nano-8gb.yaml").read_text())
    doc.update(name="my-agx", aliases=[])
    own = tmp_path / "my-agx.yaml"
    own.write_text(yaml.safe_dump(doc))
    assert load_profile(str(own)).target_arg == str(own)
    monkeypatch.chdir(tmp_path)  # given relative, printed absolute: followed from anywhere
    assert load_profile("my-agx.yaml").target_arg == str(own.resolve())
    assert load_profile("jetson").target_arg == "jetson-orin-nano-8gb"
    out = B.write_bundle(str(own), tmp_path / "cal", zoo=Z.models(SMALL[:2], ["fp16"]))
    for name in ("README.md", "run_all.sh"):
        assert f"kdc calibrate --target {own} --from" in (out / name).read_text()
