"""NNCF is imported without OpenVINO telemetry: nothing written to the user's home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KDC_ROOT = Path(__file__).resolve().parents[2]


def test_import_nncf_writes_nothing_to_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "from kdc.compress.nncf_quiet import import_nncf\n"
        "import sys\n"
        "import_nncf()\n"
        "assert 'openvino_telemetry' not in sys.modules\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('openvino_telemetry'):\n"
        "    import openvino_telemetry\n"  # later imports by other code still work
    )
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(KDC_ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)
    assert not list(home.rglob("*"))
