"""Import NNCF without OpenVINO telemetry."""

from __future__ import annotations

import sys
from types import ModuleType


def import_nncf() -> ModuleType:
    """`import nncf` with `openvino_telemetry` hidden for that first import: NNCF 3.4 otherwise
    writes a client id and usage counts to ~/intel at import (before its own opt-out switches
    apply) and sends them unless the user opted out; without the package it uses its no-op
    stub. Later imports of openvino_telemetry by other code are unaffected."""
    if "nncf" not in sys.modules:
        hide = "openvino_telemetry" not in sys.modules
        if hide:
            sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # ImportError
        try:
            import nncf  # noqa: F401
        finally:
            if hide:
                del sys.modules["openvino_telemetry"]
    return sys.modules["nncf"]
