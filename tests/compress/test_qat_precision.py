"""Quantization-aware training makes an INT8 graph: with `quantize.method: qat` and precision
fp32 or fp16 distill trains none, the run says so once, and every stage hashes as the same config
without `method: qat` (its outputs are that config's)."""

from __future__ import annotations

import json

import pytest
from tiny import config_of, write_yaml

from kdc import api
from kdc.config import parse_config
from kdc.preflight import config_warnings

NOTE = "quantize.method qat not used"
COMPUTING = ("search", "distill", "export", "build", "verify")


def _notes(cfg: dict) -> list[str]:
    return [n for n in config_warnings(parse_config(cfg, source="m.yaml")) if NOTE in n]


def test_the_warning_names_the_file_the_field_and_the_fix():
    cfg = {
        "name": "t",
        "task": "image-classification",
        "teacher": {"name": "resnet18"},
        "data": {"source": "sklearn:digits"},
        "quantize": {"method": "qat", "precision": "fp16"},
    }
    (note,) = _notes(cfg)
    assert note.startswith("m.yaml: quantize.method qat not used") and "fp16" in note
    assert "set quantize.precision: int8 for QAT, or drop quantize.method: qat" in note
    cfg["quantize"]["precision"] = "int8"  # QAT runs
    assert _notes(cfg) == []
    cfg["quantize"] = {"precision": "fp32"}  # no QAT asked
    assert _notes(cfg) == []


@pytest.mark.parametrize(("precision", "target"), [("fp32", "host"), ("fp16", "jetson")])
def test_qat_for_a_float_engine_is_not_run(cnn_project, tmp_path, capsys, precision, target):
    """No QAT graph, history or metrics; warned once by the run and in the plan; the resume plan
    of the config without `method: qat` finds every stage up to date."""
    cfg = config_of(cnn_project)
    cfg["distill"].update(epochs=1)
    cfg["quantize"].update(precision=precision, method="qat", qat_epochs=1)
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    assert sum(NOTE in n for n in api.plan(path, target, run)["warnings"]) == 1
    capsys.readouterr()
    report = api.compress(path, target, run, quiet=True)
    out = capsys.readouterr().out
    assert out.count(NOTE) == 1 and f"{path}: {NOTE}" in out
    rec = json.loads((run / "manifest.json").read_text())["stages"]["distill"]
    assert not any("qat" in o for o in rec["outputs"]), rec["outputs"]
    assert not any(k.startswith("qat") for k in rec["metrics"]), rec["metrics"]
    assert not (run / "distill" / "student_qat.onnx").exists()
    assert not any(e.get("quantization") for e in report["engines"])
    del cfg["quantize"]["method"]
    plan = api.plan(write_yaml(path, cfg), target, run, resume=True)
    assert {s: plan["resume"][s] for s in COMPUTING} == dict.fromkeys(
        COMPUTING, "up to date, skipped"
    )
    assert not any(NOTE in n for n in plan.get("warnings", []))
