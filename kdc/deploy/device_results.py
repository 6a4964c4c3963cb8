"""Read back what `bench.sh` measured on the device: a measured latency object plus parity."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kdc.deploy.trtexec import BENCH_PROTOCOL, WARMUP_MS, parse_export_times
from kdc.errors import UserError

_FIX = "run bench.sh on the device and copy its results/ directory back"


def _read(path: Path, *, required: bool) -> dict | None:
    if not path.is_file():
        if required:
            raise UserError("file not found", source=str(path), fix=_FIX)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"corrupt JSON ({e})", source=str(path), fix=_FIX) from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", source=str(path), fix=_FIX)
    return data


def trt_version_from_banner(banner: str) -> str | None:
    """'TensorRT v100300' -> '10.3.0'; 'TensorRT v8601' -> '8.6.1' (trtexec's version tag)."""
    m = re.search(r"v(\d+)", banner or "")
    if not m:
        return None
    n = int(m.group(1))
    major, rest = (n // 10000, n % 10000) if n >= 100000 else (n // 1000, n % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def read_device_results(results_dir: Path | str, bundle_meta: dict) -> dict:
    """`{"latency": <measured latency object>, "parity": {...}}` from a bundle's results/.

    `bundle_meta` is the bundle's bundle.json. Latency is trtexec's per-iteration `latencyMs`
    with --noDataTransfers, so it excludes host<->device copies."""
    results_dir = Path(results_dir)
    stats = parse_export_times(results_dir / "times.json")
    parity = _read(results_dir / "parity.json", required=True)
    device = _read(results_dir / "device.json", required=False) or {}
    version = trt_version_from_banner(device.get("trtexec", ""))
    shapes = bundle_meta.get("input_shapes", {})
    latency = {
        "kind": "measured",
        "device": device.get("device") or "unknown (results/device.json missing)",
        "engine": "tensorrt",
        "tensorrt": version or "unknown",
        "precision": bundle_meta.get("precision"),
        "batch": bundle_meta.get("batch"),
        "input_shape": shapes,
        "warmup_ms": WARMUP_MS,
        **stats,
        "protocol": "trtexec " + " ".join(BENCH_PROTOCOL),
        "source": f"device results {results_dir}",
    }
    expected = bundle_meta.get("tensorrt_expected")
    if version and expected and version.split(".")[0] != str(expected).split(".")[0]:
        latency["note"] = f"bundle expected TensorRT {expected}, device ran {version}"
    return {"latency": latency, "parity": parity}
