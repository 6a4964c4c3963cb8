"""`kdc bundle RUN --target T` on a finished run: a bundle holding device results is moved
aside, never deleted, and an INT8 bundle's goldens are its graph run with Q/DQ in float."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny import config_of, write_yaml
from typer.testing import CliRunner

from kdc import api
from kdc.cli import app
from kdc.deploy.onnxruntime import make_session, run_session
from kdc.rundir import read_json

runner = CliRunner()


@pytest.fixture(scope="module")
def run(cnn_project, tmp_path_factory) -> Path:
    """The CNN compressed for a Jetson: its INT8 graph ships as a device bundle."""
    cfg = config_of(cnn_project)
    cfg["distill"]["epochs"] = 1
    root = tmp_path_factory.mktemp("bundle-command")
    api.compress(write_yaml(root / "model.yaml", cfg), "jetson", root / "run", quiet=True)
    return root / "run"


def _bundle(run: Path) -> str:
    res = runner.invoke(app, ["bundle", str(run), "--target", "jetson"])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_kdc_bundle_moves_a_bundle_holding_device_results_aside(run):
    bundle = run / "build" / "bundle"
    (bundle / "results").mkdir()
    (bundle / "results" / "times.json").write_text("[]")
    (bundle / "model.plan").write_bytes(b"ENGINE")  # built on the device, copied back
    out = _bundle(run)
    assert (
        "build/bundle holds device results (kdc bundle writes a new bundle there): moved to "
        "build/previous-bundle" in out
    )
    aside = run / "build" / "previous-bundle"
    assert (aside / "results" / "times.json").read_text() == "[]"
    assert (aside / "model.plan").read_bytes() == b"ENGINE"
    assert (bundle / "bundle.json").is_file() and not (bundle / "results").exists()
    (bundle / "results").mkdir()
    assert "moved to build/previous-bundle-2" in _bundle(run)  # the earlier one kept too
    assert (aside / "results" / "times.json").is_file()
    assert "moved" not in _bundle(run)  # no results: the bundle is just written again
    assert not (run / "build" / "previous-bundle-3").exists()
    res = runner.invoke(app, ["inspect", str(run)])  # recorded; verify judged the old bundle
    assert "CORRUPT" not in res.output, res.output
    assert res.exit_code == 1 and "verify, report were built from earlier outputs" in res.output


def test_int8_goldens_are_the_graph_run_with_qdq_in_float(run):
    """As verify's stand-in for the engine runs it; this CPU's int8 kernels (which saturate on
    S8S8 without VNNI) are not what TensorRT computes."""
    bundle = run / "build" / "bundle"
    meta = json.loads((bundle / "bundle.json").read_text())
    trt = next(e for e in read_json(run / "build" / "engines.json") if e["engine"] == "tensorrt")
    assert meta["precision"] == trt["precision"] == "int8"
    with np.load(bundle / "goldens.npz") as z:
        inputs = {k: z[k] for k in meta["inputs"]}
        goldens = z[meta["output_name"]]
    qdq_in_float = run_session(make_session(run / trt["source"], optimization="disable"), inputs)
    np.testing.assert_array_equal(goldens, qdq_in_float)


def test_a_failed_kdc_bundle_keeps_the_bundle_it_would_have_replaced(run, monkeypatch):
    """A bundle with device results was moved aside, then the new one failed: the run lost its
    bundle (verify and inspect then refused it)."""
    import kdc.stages.build_tensorrt
    from kdc.errors import UserError

    bundle = run / "build" / "bundle"
    (bundle / "results").mkdir(exist_ok=True)

    def fails(*args, **kwargs):
        raise UserError("cannot write the bundle", field="target", fix="-")

    monkeypatch.setattr(kdc.stages.build_tensorrt, "make_bundle", fails)
    res = runner.invoke(app, ["bundle", str(run), "--target", "jetson"])
    assert res.exit_code == 2 and "moved previous-bundle" in " ".join(res.output.split())
    assert (bundle / "results").is_dir() and (bundle / "bundle.json").is_file()
    shutil.rmtree(bundle / "results")
