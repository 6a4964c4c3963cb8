"""A device bundle's files as the device brings them back (bundle.json, results/*.json), for
the device-results tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from kdc.deploy.constraints import evaluate_constraints, passed

JETSON = "jetson-orin-nano-8gb"
ORIN_NANO = "NVIDIA Jetson Orin Nano Developer Kit"
META = {
    "profile": JETSON,
    "precision": "int8",
    "batch": 1,
    "input_shapes": {"input_ids": [1, 128]},
    "onnx_sha256": "abc123",
    "tensorrt_expected": "10.3",
    "parity_min_cosine": 0.99,
}
SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"
PARITY = {
    "status": "measured",
    "runner": "tensorrt",
    "n": 8,
    "max_abs": 0.01,
    "mean_abs": 0.002,
    "cosine": 0.9995,
    "cosine_min_row": 0.998,
    "argmax_agreement": 1.0,
    "min_cosine": 0.99,
    "pass": True,
}


def write_times(d: Path, values: list[float]) -> None:
    """times.json (trtexec --exportTimes) with these latencies in ms."""
    rows = [
        {"startComputeMs": i, "computeMs": 0.5 * v, "latencyMs": v} for i, v in enumerate(values)
    ]
    (d / "times.json").write_text(json.dumps(rows))


def edit_json(path: Path, **fields) -> None:
    """Overwrite these fields of a JSON file."""
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def report_with(engine_update: dict) -> dict:
    """The sample report with the tensorrt-int8 engine carrying what the device brought back."""
    report = copy.deepcopy(json.loads(SAMPLE.read_text()))
    trt = next(
        e for e in report["engines"] if e["engine"] == "tensorrt" and e["precision"] == "int8"
    )
    trt.update(engine_update)
    rows = evaluate_constraints(report, {}, {"latency_budget_ms": 10.0})
    report["constraints"], report["passed"] = rows, passed(rows)
    return report
