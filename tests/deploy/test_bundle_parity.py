"""Device bundle parity (parity.py on the CPU and on a stand-in TensorRT device) and engines
for a range of batches (`build.max_batch`)."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from stand_in_device import make_bundle

from kdc.deploy.input_contract import image_input_contract
from kdc.errors import UserError


def _parity(bundle, env=None) -> dict:
    """Run the bundle's parity.py (on the stand-in device with `env`); its parity.json."""
    subprocess.run([sys.executable, str(bundle / "parity.py")], check=True, env=env)
    return json.loads((bundle / "results" / "parity.json").read_text())


def test_parity_script_falls_back_to_onnxruntime_on_cpu_and_exits_1(tmp_path, goldens):
    """ONNX Runtime on the CPU compares model.onnx, not the engine: recorded, and a failure."""
    out = make_bundle(tmp_path, goldens, precision="fp32")
    run = subprocess.run([sys.executable, str(out / "parity.py")], capture_output=True, text=True)
    assert run.returncode == 1 and "not checked on the TensorRT engine" in run.stderr
    assert "PYTHON=/usr/bin/python3 ./bench.sh" in run.stderr
    parity = json.loads((out / "results" / "parity.json").read_text())
    assert parity["status"] == "measured" and parity["runner"] == "onnxruntime"
    assert parity["cosine"] == pytest.approx(1.0, abs=1e-6) and parity["pass"]
    assert parity["n"] == 5 and "model.plan not found" in parity["notes"][0]


def test_parity_script_runs_the_engine_through_libcudart(tmp_path, goldens, fake_device):
    """JetPack has tensorrt and libcudart, not torch: the engine itself is checked, its buffers
    allocated and copied through libcudart (batches of the bundle's size, the last padded)."""
    out = make_bundle(tmp_path, goldens, precision="fp32")
    (out / "model.plan").write_bytes(b"ENGINE")
    parity = _parity(out, fake_device)
    assert parity["runner"] == "tensorrt" and parity["pass"] and parity["n"] == 5
    assert parity["cosine"] == pytest.approx(1.0, abs=1e-6) and parity["notes"] == []


def test_parity_script_falls_back_when_the_tensorrt_runner_fails(tmp_path, goldens, fake_device):
    """tensorrt importable but the plan does not load: the check still runs on ONNX Runtime and
    the note says why, instead of a traceback and no parity.json."""
    out = make_bundle(tmp_path, goldens, precision="fp32")
    (out / "model.plan").write_bytes(b"built by another TensorRT")
    run = subprocess.run([sys.executable, str(out / "parity.py")], env=fake_device)
    assert run.returncode == 1  # the engine was not checked
    parity = json.loads((out / "results" / "parity.json").read_text())
    assert parity["runner"] == "onnxruntime" and parity["pass"]
    assert "did not deserialize" in parity["notes"][0]


def test_a_bundle_with_max_batch_builds_an_engine_for_a_range_of_batches(tmp_path, goldens):
    """build.max_batch: trtexec gets batches 1 to max_batch tuned for the verify batch, timing
    and parity stay at that batch, and the input contract and README say which batches run."""
    contract = image_input_contract(
        "sklearn:digits", "x", [2, 1, 8, 8], ["a", "b", "c"], max_batch=16
    )
    ranged = {"input_contract": contract, "max_batch": 16}
    out = make_bundle(tmp_path, goldens, "nvidia-t4", **ranged)
    build, bench = ((out / f).read_text() for f in ("build.sh", "bench.sh"))
    assert all(f in build for f in ("--minShapes=x:1x8", "--optShapes=x:2x8", "--maxShapes=x:16x8"))
    assert "--shapes=x:2x8" in bench
    meta = json.loads((out / "bundle.json").read_text())
    assert (meta["batch"], meta["max_batch"]) == (2, 16)
    batch = json.loads((out / "preprocessing" / "input.json").read_text())["batch"]
    assert (batch["min"], batch["opt"], batch["max"]) == (1, 2, 16)
    readme = (out / "README.md").read_text()
    assert "batches 1 to 16, tuned and timed at 2" in readme and "1 to 16 rows" in batch["note"]
    with pytest.raises(UserError, match="DLA engine takes one input shape") as e:
        make_bundle(tmp_path, goldens, "jetson-agx-orin-64gb", name="dla", dla_core=0, **ranged)
    assert e.value.field == "build.max_batch"
    model, inputs, outputs = goldens
    fixed = tmp_path / "fixed.onnx"  # a graph whose batch is fixed: its engine takes one
    m = onnx.load(str(model))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(m, fixed)
    with pytest.raises(UserError, match="input x of the graph has a fixed batch") as e:
        make_bundle(tmp_path, (fixed, inputs, outputs), "nvidia-t4", name="fixed", **ranged)
    assert e.value.field == "build.max_batch"


def test_parity_of_an_engine_for_a_range_of_batches_runs_its_smallest_and_largest_batch_too(
    tmp_path, goldens, fake_device
):
    """build.max_batch: parity.py runs the goldens at the tuned batch, at 1 and at max_batch (the
    last chunk padded), and each must pass; a failure at one batch fails the check and says so."""
    from kdc.deploy.constraints import _device_parity_rows
    from kdc.deploy.device_results import _device_parity, _parity_warnings

    out = make_bundle(tmp_path, goldens, "nvidia-t4", "fp32", max_batch=4)
    (out / "model.plan").write_bytes(b"ENGINE")
    parity = _parity(out, fake_device)
    assert parity["runner"] == "tensorrt" and parity["pass"]
    assert sorted(parity["batches"]) == ["1", "2", "4"]
    assert all(c["pass"] and c["n"] == 5 for c in parity["batches"].values())
    parity["batches"]["4"]["pass"] = False  # as if the largest batch's kernels were wrong
    checked = _device_parity(parity, 0.99, "Tesla T4", out / "results" / "parity.json")
    assert not checked["passed"] and checked["failed_batches"] == ["4"]
    assert "device parity FAILED at batch 4" in _parity_warnings(checked)[0]
    row = _device_parity_rows(
        {"engines": [{"engine": "tensorrt", "precision": "fp32", "parity": checked}]}
    )[0]
    assert not row["pass"] and "outputs at batch 4 differ" in row["reason"]
    for bad in ({"1": {"pass": True}, "x": {}}, ["1"]):
        with pytest.raises(UserError, match="'batches' is not an object keyed by batch size"):
            _device_parity({**parity, "batches": bad}, 0.99, "Tesla T4", out / "parity.json")
    # max_batch equal to the tuned batch: the profile still takes 1 row, so 1 is checked too
    same = make_bundle(tmp_path, goldens, "nvidia-t4", "fp32", name="same", max_batch=2)
    (same / "model.plan").write_bytes(b"ENGINE")
    parity = _parity(same, fake_device)
    assert sorted(parity["batches"]) == ["1", "2"] and parity["pass"]


def test_a_text_bundles_readme_says_which_batches_its_engine_takes(tmp_path, goldens):
    from kdc.deploy.input_contract import text_input_contract

    for max_batch, words in ((None, "takes exactly the shapes it names"), (16, "from 1 to 16")):
        contract = text_input_contract(
            {"x": ([2, 8], "float32")}, 8, ["a", "b", "c"], "logits", max_batch=max_batch
        )
        out = make_bundle(
            tmp_path,
            goldens,
            "nvidia-t4",
            "fp32",
            name=f"b{max_batch}",
            input_contract=contract,
            max_batch=max_batch,
        )
        assert words in " ".join((out / "README.md").read_text().split())


def test_the_parity_script_imports_nothing_the_device_lacks():
    """parity.py runs on the device, where kdc is not installed: a `kdc` import (or any other
    third-party one) would pass every test here and fail there."""
    import ast

    from kdc.deploy.bundle import PARITY_SCRIPT

    tree = ast.parse(PARITY_SCRIPT.read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    third_party = imported - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", "tensorrt", "onnxruntime"}, third_party
