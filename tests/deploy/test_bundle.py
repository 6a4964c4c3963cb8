"""Device bundle: contents, script syntax, input contracts, a run with a stand-in trtexec."""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from stand_in_device import make_bundle

from kdc.deploy.bundle import bundle_dir
from kdc.deploy.device_results import read_device_results
from kdc.deploy.external_data import external_data_files
from kdc.deploy.input_contract import image_input_contract
from kdc.errors import UserError
from kdc.profiles import load_profile

FILES = {
    "model.onnx",
    "build.sh",
    "bench.sh",
    "parity.py",
    "goldens.npz",
    "profile.yaml",
    "bundle.json",
    "README.md",
}


FAKE_TRTEXEC = """#!/usr/bin/env bash
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"
for arg in "$@"; do
  case "$arg" in
    --saveEngine=*) printf 'ENGINE' > "${arg#--saveEngine=}" ;;
    --exportTimes=*) python3 -c 'import json, sys
rows = [{"latencyMs": 1 + i / 100, "computeMs": 1.0} for i in range(100)]
json.dump(rows, open(sys.argv[1], "w"))
' "${arg#--exportTimes=}" ;;
  esac
done
"""


def test_bundle_has_every_file_and_valid_scripts(tmp_path, goldens):
    out = make_bundle(tmp_path, goldens)
    assert {p.name for p in out.iterdir()} == FILES
    for script in ("build.sh", "bench.sh", "parity.py"):
        assert os.access(out / script, os.X_OK)
    subprocess.run(["bash", "-n", str(out / "build.sh"), str(out / "bench.sh")], check=True)
    for script in ("build.sh", "bench.sh"):
        assert "set -euo pipefail" in (out / script).read_text()
    py_compile.compile(str(out / "parity.py"), cfile=str(tmp_path / "parity.pyc"), doraise=True)
    with np.load(out / "goldens.npz") as z:
        assert np.array_equal(z["x"], goldens[1]["x"]) and np.array_equal(z["logits"], goldens[2])


def test_bundle_for_tensorrt_10_uses_precision_flags(tmp_path, goldens):
    out = make_bundle(tmp_path, goldens)
    build = (out / "build.sh").read_text()
    assert '"$TRTEXEC"' in build and "--fp16" in build and "--stronglyTyped" not in build
    assert "--minShapes=x:2x8" in build and "--saveEngine=model.plan" in build
    bench = (out / "bench.sh").read_text()
    assert all(
        f in bench
        for f in (
            "--useCudaGraph",
            "--useSpinWait",
            "--noDataTransfers",
            "--exportTimes=results/times.json",
            "parity.py",
        )
    )
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["tensorrt_expected"] == "10.3" and meta["batch"] == 2
    assert meta["precision"] == "fp16" and not meta["fp16_converted"]
    assert "jetson-orin-nano-8gb" in (out / "README.md").read_text()
    dla = make_bundle(tmp_path, goldens, "jetson-agx-orin-64gb", name="dla", dla_core=0)
    assert all(
        f in (dla / "build.sh").read_text() for f in ("--useDLACore=0", "--allowGPUFallback")
    )


def test_bundle_for_tensorrt_11_is_strongly_typed_with_fp16_graph(tmp_path, goldens):
    base = load_profile("jetson-orin-nano-8gb")
    prof = base.model_copy(update={"runtime": base.runtime.model_copy(update={"tensorrt": "11.1"})})
    out = make_bundle(tmp_path, goldens, profile=prof)
    build = (out / "build.sh").read_text()
    assert "--stronglyTyped" not in build and "--fp16" not in build  # (a deprecated no-op)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["fp16_converted"] and meta["strongly_typed"]
    model = onnx.load(out / "model.onnx")
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


def test_bundle_refuses_bad_input(tmp_path, goldens):
    with pytest.raises(UserError, match="Q/DQ"):
        make_bundle(tmp_path, goldens, precision="int8")
    with pytest.raises(UserError, match="no TensorRT"):
        make_bundle(tmp_path, goldens, profile="host", precision="fp32")
    with pytest.raises(UserError, match="golden 'x'"):
        make_bundle(tmp_path, goldens, "jetson", name="b", input_shapes={"x": [2, 4]})


def test_bundle_for_another_target_is_written_beside_the_existing_one(tmp_path, goldens):
    """`kdc bundle RUN --target t4` on a Jetson run keeps the run's own bundle."""
    own = make_bundle(tmp_path, goldens)
    other = make_bundle(tmp_path, goldens, profile="nvidia-t4")
    assert other == tmp_path / "bundle-nvidia-t4"
    assert json.loads((own / "bundle.json").read_text())["profile"] == "jetson-orin-nano-8gb"
    assert json.loads((other / "bundle.json").read_text())["profile"] == "nvidia-t4"
    assert "scp -r bundle-nvidia-t4 " in (other / "README.md").read_text()
    assert make_bundle(tmp_path, goldens) == own  # the same target rewrites its own directory
    assert bundle_dir(own, "nvidia-t4") == other
    assert bundle_dir(own, "jetson-orin-nano-8gb") == own


needs_stand_in = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None,
    reason="parity.py would load the stand-in engine with real TensorRT",
)


def _run_on_stand_in_device(
    tmp_path: Path, bundle: Path, python: Path | None = None
) -> subprocess.CompletedProcess:
    """build.sh then bench.sh with a stand-in trtexec (its latencies vary: cv 19.3 %), and
    `python` as PYTHON (unset: python3 on PATH, which cannot import tensorrt)."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.is_dir():
        bin_dir.mkdir()
        (bin_dir / "trtexec").write_text(FAKE_TRTEXEC)
        (bin_dir / "trtexec").chmod(0o755)
        (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for var in ("TRTEXEC", "PYTHON", "PYTHONPATH"):
        env.pop(var, None)
    if python is not None:
        env["PYTHON"] = str(python)
    subprocess.run(["bash", str(bundle / "build.sh")], check=True, env=env, capture_output=True)
    assert (bundle / "model.plan").read_bytes() == b"ENGINE"
    return subprocess.run(
        ["bash", str(bundle / "bench.sh")], env=env, capture_output=True, text=True
    )


@needs_stand_in
def test_build_and_bench_scripts_run_with_a_stand_in_trtexec(tmp_path, goldens, trt_python):
    out = make_bundle(tmp_path, goldens, precision="fp32")
    bench = _run_on_stand_in_device(tmp_path, out, trt_python)
    assert bench.returncode == 0, bench.stderr
    assert "warning: latency cv 19.3% over 100 iterations exceeds 2.5%" in bench.stderr
    meta = json.loads((out / "bundle.json").read_text())
    device = json.loads((out / "results" / "device.json").read_text())
    assert device["profile"] == meta["profile"] and device["onnx_sha256"] == meta["onnx_sha256"]
    assert device["bench_command"] == meta["bench_command"]
    assert device["build_command"] == meta["build_command"]
    res = read_device_results(out / "results", out, "jetson-orin-nano-8gb")
    assert res["latency"]["kind"] == "measured" and res["latency"]["iterations"] == 100
    assert res["latency"]["tensorrt"] == "10.3.0" and res["latency"]["cv"] == pytest.approx(
        0.193, abs=1e-3
    )
    assert "cv 19.3%" in res["latency"]["warnings"][0]
    assert res["parity"]["passed"] and res["parity"]["runner"] == "tensorrt"


@needs_stand_in
def test_bench_with_a_python_that_cannot_import_tensorrt_fails_parity(tmp_path, goldens):
    """A venv's python3 first on PATH: parity.py falls back to ONNX Runtime on the CPU, which
    checks model.onnx, not the engine; bench.sh exits 1 and verification fails, saying why."""
    out = make_bundle(tmp_path, goldens, precision="fp32")
    bench = _run_on_stand_in_device(tmp_path, out)
    assert bench.returncode == 1 and "not checked on the TensorRT engine" in bench.stderr
    res = read_device_results(out / "results", out, "jetson-orin-nano-8gb")
    assert res["latency"]["iterations"] == 100  # the timing itself stands
    assert not res["parity"]["passed"] and res["parity"]["runner"] == "onnxruntime"
    (warning,) = (w for w in res["warnings"] if "parity" in w)
    assert "parity was checked with onnxruntime on model.onnx, not the TensorRT engine" in warning
    assert "No module named 'tensorrt'" in warning and "PYTHON=/usr/bin/python3" in warning


@needs_stand_in
def test_results_of_a_bundle_for_another_target_are_refused(tmp_path, goldens):
    own = make_bundle(tmp_path, goldens, precision="fp32")
    other = make_bundle(tmp_path, goldens, profile="nvidia-t4", precision="fp32")
    _run_on_stand_in_device(tmp_path, other)
    with pytest.raises(UserError, match=r"device.json: field 'profile': .* for nvidia-t4"):
        read_device_results(other / "results", own, "jetson-orin-nano-8gb")
    assert read_device_results(other / "results", other, "nvidia-t4")["latency"]["iterations"]


@needs_stand_in
def test_bench_exits_1_on_a_failed_parity_check_after_writing_its_results(
    tmp_path, goldens, trt_python
):
    out = make_bundle(tmp_path, goldens, precision="fp32")
    with np.load(out / "goldens.npz") as z:
        saved = {k: z[k] for k in z.files}
    np.savez(out / "goldens.npz", **{**saved, "logits": -saved["logits"]})
    bench = _run_on_stand_in_device(tmp_path, out, trt_python)
    assert bench.returncode == 1 and "kdc verify RUN_DIR --device-results" in bench.stdout
    res = read_device_results(out / "results", out, "jetson-orin-nano-8gb")
    assert not res["parity"]["passed"] and res["parity"]["cosine"] == pytest.approx(-1.0)
    assert res["parity"]["runner"] == "tensorrt"
    assert "device parity FAILED: cosine -1.0000" in res["warnings"][0]


def test_build_sh_stops_with_the_fix_when_trtexec_is_tensorrt_11(tmp_path, goldens):
    """TensorRT 11's trtexec has no --fp16/--int8: a bundle made for 10.x says so and how to
    make one for 11 (exit 2) instead of trtexec's "Unknown option"; an 11.x bundle has no guard."""
    out = make_bundle(tmp_path, goldens)
    trt11 = tmp_path / "trtexec11"
    trt11.write_text(FAKE_TRTEXEC.replace("v100300", "v110100"))
    trt11.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(trt11)}
    run = subprocess.run([str(out / "build.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 2
    assert "TensorRT 11.x" in run.stderr and "runtime.tensorrt: '11.0'" in run.stderr
    assert not (out / "model.plan").exists()
    trt10 = tmp_path / "trtexec10"
    trt10.write_text(FAKE_TRTEXEC)
    trt10.chmod(0o755)
    run = subprocess.run([str(out / "build.sh")], env={**env, "TRTEXEC": str(trt10)})
    assert run.returncode == 0 and (out / "model.plan").is_file()
    profile = load_profile("jetson-orin-nano-8gb")
    v11 = profile.model_copy(
        update={"runtime": profile.runtime.model_copy(update={"tensorrt": "11.0"})}
    )
    strongly_typed = make_bundle(tmp_path / "v11", goldens, profile=v11)
    assert "110000" not in (strongly_typed / "build.sh").read_text()


def test_an_input_contract_is_carried_in_preprocessing_and_named(tmp_path, goldens):
    """A model without preprocessing files of its own (a CNN) carries its input contract."""
    contract = image_input_contract("sklearn:digits", "x", [2, 1, 8, 8], ["a", "b", "c"])
    out = make_bundle(tmp_path, goldens, "jetson", input_contract=contract)
    assert json.loads((out / "preprocessing" / "input.json").read_text()) == contract
    assert json.loads((out / "bundle.json").read_text())["preprocessing"] == ["input.json"]
    readme = (out / "README.md").read_text()
    assert "preprocessing/input.json" in readme and "x / 16.0" in readme


def test_a_vision_transformer_contract_adds_its_resize_and_normalisation():
    """An 8-pixel ViT's image folder: the contract says the reader's steps as its image
    processor gives them (bilinear, ViTImageProcessor's default), then the processor's mean/std
    (the bundle's preprocessor_config.json starts from raw images and rescales by 1/255
    itself); digits (8x8) into a 16-pixel ViT are resized by the adapter."""
    from kdc.image_processor import vit_defaults

    processor = {**vit_defaults(8, 3), "image_std": [0.25] * 3}
    c = image_input_contract(
        "imagefolder:imgs", "pixel_values", [1, 3, 8, 8], ["a", "b"], processor=processor
    )
    steps = c["preprocessing"]["steps"]
    assert "Image.resize((8, 8), Image.Resampling.BILINEAR)" in steps[1]
    assert not any(s.startswith("resize to") for s in steps)
    assert (
        steps[-1] == "per channel: (x - mean) / std, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25]"
    )
    assert c["input"]["mean"] == [0.5] * 3 and c["input"]["value_range"] is None
    digits = image_input_contract(
        "sklearn:digits", "pixel_values", [1, 1, 16, 16], ["0"], processor=vit_defaults(16, 1)
    )
    assert digits["preprocessing"]["steps"][-2].startswith("resize to 16x16: bilinear")
    assert digits["preprocessing"]["resize"] is None  # no Pillow resize: digits are arrays


@needs_stand_in
def test_an_engine_of_an_earlier_model_is_not_timed_and_old_results_go(tmp_path, goldens):
    """A bundle copied over an older one: a failed build leaves no engine, an engine built from
    another model.onnx is refused by bench.sh, and its results/ of the earlier run are
    removed before timing; no trtexec names TRTEXEC."""
    out = make_bundle(tmp_path, goldens, precision="fp32")
    _run_on_stand_in_device(tmp_path, out)
    assert (out / "results" / "times.json").is_file()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("TRTEXEC", None)
    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes() + b" ")  # a new model
    bench = subprocess.run(["bash", str(out / "bench.sh")], env=env, capture_output=True, text=True)
    assert bench.returncode == 1
    assert "model.plan was not built from this bundle's model.onnx: run ./build.sh" in bench.stderr
    (out / "model.plan.onnx_sha256").write_text("")  # an empty record is no record
    bench = subprocess.run(["bash", str(out / "bench.sh")], env=env, capture_output=True, text=True)
    assert bench.returncode == 1 and "was not built from this bundle's model.onnx" in bench.stderr
    failing = tmp_path / "failing"
    failing.mkdir()
    (failing / "trtexec").write_text("#!/usr/bin/env bash\nexit 1\n")
    (failing / "trtexec").chmod(0o755)
    build = subprocess.run(
        ["bash", str(out / "build.sh")], env={**env, "TRTEXEC": str(failing / "trtexec")}
    )
    assert build.returncode == 1 and not (out / "model.plan").exists()
    missing = subprocess.run(
        ["bash", str(out / "build.sh")],
        env={**env, "TRTEXEC": str(tmp_path / "nowhere" / "trtexec")},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 127 and "nowhere/trtexec: no such program" in missing.stderr
    env_bare = {k: v for k, v in env.items() if k != "TRTEXEC"} | {"PATH": "/usr/bin:/bin"}
    missing = subprocess.run(
        ["bash", str(out / "build.sh")], env=env_bare, capture_output=True, text=True
    )
    assert missing.returncode == 127 and "run with TRTEXEC=/path/to/trtexec" in missing.stderr
    subprocess.run(["bash", str(out / "build.sh")], env=env, check=True, capture_output=True)
    (out / "results" / "parity.json").write_text("{}")  # an earlier run's
    (out / "parity.py").write_text("raise SystemExit(1)\n")  # this run's parity cannot run
    bench = subprocess.run(["bash", str(out / "bench.sh")], env=env, capture_output=True, text=True)
    assert bench.returncode == 1  # its parity.json says parity.py failed, not an earlier pass
    res = read_device_results(out / "results", out, "jetson-orin-nano-8gb")
    assert not res["parity"]["passed"]
    assert "parity.py failed before writing its result (exit 1" in res["parity"]["error"]


@pytest.mark.parametrize("trt", ["10.3", "11.1"])  # the graph copied / converted to fp16
def test_a_model_with_external_data_is_bundled_with_its_weights(tmp_path, goldens, trt):
    """A model over 2 GB keeps its weights in files beside it: the bundle carries them, so
    model.onnx loads (and TensorRT parses it) on the device."""
    model, inputs, outputs = goldens
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    onnx.save(onnx.load(model), ext, save_as_external_data=True, size_threshold=0)
    base = load_profile("jetson-orin-nano-8gb")
    prof = base.model_copy(update={"runtime": base.runtime.model_copy(update={"tensorrt": trt})})
    out = make_bundle(tmp_path, (ext, inputs, outputs), profile=prof)
    assert external_data_files(out / "model.onnx")  # (an fp16 copy too: it may be over 2 GB)
    (tmp_path / "ext").rename(tmp_path / "gone")  # nothing read from the source any more
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"x": inputs["x"]})[0]
    assert np.allclose(got, outputs, atol=1e-2)
