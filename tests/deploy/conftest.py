"""Fixtures shared by the `kdc check` tests (test_check.py, test_check_cli.py), the device
bundle tests (test_bundle.py, test_bundle_parity.py) and the calibration tests
(test_calibrate.py, test_calibrate_dla.py)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from stand_in_device import FAKE_CUDART, FAKE_TENSORRT, tiny_model

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"


@pytest.fixture
def config_dir(tmp_path, monkeypatch) -> Path:
    """KDC_CONFIG_DIR in tmp_path: calibration files are written there."""
    monkeypatch.setenv("KDC_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture
def baseline() -> dict:
    """The sample report (tests/fixtures/report_sample.json) as a fresh dict."""
    return json.loads(SAMPLE.read_text())


@pytest.fixture
def goldens(tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    y = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    return model, {"x": x}, y


@pytest.fixture
def fake_device(tmp_path, goldens) -> dict[str, str]:
    """An environment where parity.py finds `tensorrt` and `libcudart` (stand-ins)."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler for the stand-in libcudart")
    lib = tmp_path / "lib"
    (lib / "tensorrt").mkdir(parents=True)
    (lib / "cudart.c").write_text(FAKE_CUDART)
    cc = ["cc", "-shared", "-fPIC", "-o", str(lib / "libcudart.so"), str(lib / "cudart.c")]
    subprocess.run(cc, check=True)
    (lib / "tensorrt" / "__init__.py").write_text(FAKE_TENSORRT)
    weights = onnx.load(str(goldens[0])).graph.initializer[0]
    np.save(lib / "tensorrt" / "W.npy", numpy_helper.to_array(weights))
    return {**os.environ, "PYTHONPATH": str(lib), "LD_LIBRARY_PATH": str(lib)}


@pytest.fixture
def trt_python(tmp_path, fake_device) -> Path:
    """A Python that imports the stand-in tensorrt and libcudart, as JetPack's system python3
    does (bench.sh's PYTHON); python3 on PATH stays one that cannot."""
    script = tmp_path / "trt-python"
    script.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(fake_device['PYTHONPATH'])} "
        f"LD_LIBRARY_PATH={shlex.quote(fake_device['LD_LIBRARY_PATH'])} "
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    script.chmod(0o755)
    return script
