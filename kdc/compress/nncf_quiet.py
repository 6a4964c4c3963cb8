"""NNCF without its side effects: no OpenVINO telemetry, no per-op log lines or progress bars."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from types import ModuleType
from typing import Any


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


def quantize(model: Any, items: list, **kwargs: Any) -> Any:
    """`nncf.quantize(model, Dataset(items), subset_size=len(items), **kwargs)` with NNCF's INFO
    lines (one per op it leaves unquantized) and progress bars held back: kdc logs its stages."""
    nncf = import_nncf()
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **kwargs)
    finally:
        log.setLevel(level)
