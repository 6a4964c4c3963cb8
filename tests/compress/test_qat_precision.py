"""Quantization-aware training makes an INT8 graph: with `quantize.method: qat` and precision
fp32 or fp16 distill trains none, the run says so once, and every stage hashes as the same config
without `method: qat` (its outputs are that config's). QAT's own settings (`qat_epochs`, `qat_lr`)
given where QAT does not run are warned as not used, in the same note."""

from __future__ import annotations

import json

import pytest
from tiny import config_of, write_yaml

from kdc import api
from kdc.config import parse_config
from kdc.preflight import config_warnings

NOTE = "quantize.method qat not used"
IDLE_QAT = "so distill trains no QAT graph"  # any unused QAT setting's note
COMPUTING = ("search", "distill", "export", "build", "verify")


def _notes(cfg: dict, note: str = NOTE) -> list[str]:
    return [n for n in config_warnings(parse_config(cfg, source="m.yaml")) if note in n]


def _config(**quantize) -> dict:
    return {
        "name": "t",
        "task": "image-classification",
        "teacher": {"name": "resnet18"},
        "data": {"source": "sklearn:digits"},
        "quantize": quantize,
    }


def test_the_warning_names_the_file_the_field_and_the_fix():
    cfg = _config(method="qat", precision="fp16")
    (note,) = _notes(cfg)
    assert note.startswith("m.yaml: quantize.method qat not used") and "fp16" in note
    assert note.endswith("(fix: set quantize.precision: int8 for QAT, or drop quantize.method)")
    cfg["quantize"]["precision"] = "int8"  # QAT runs
    assert _notes(cfg) == []
    cfg["quantize"] = {"precision": "fp32"}  # no QAT asked
    assert _notes(cfg) == []


@pytest.mark.parametrize(
    ("quantize", "unused", "fix"),
    [
        (  # PTQ of an INT8 graph
            {"qat_epochs": 5},
            "quantize.qat_epochs not used: this run quantizes after training (quantize.method ptq)",
            "(fix: set quantize.method: qat for QAT, or drop quantize.qat_epochs)",
        ),
        (  # no INT8 graph, no QAT asked
            {"precision": "fp32", "qat_lr": 1e-4},
            "quantize.qat_lr not used: quantization-aware training makes an INT8 graph and this "
            "run builds fp32 engines",
            "(fix: set quantize.precision: int8 and quantize.method: qat for QAT, or drop "
            "quantize.qat_lr)",
        ),
        (  # QAT asked for an FP16 run: the one note names every QAT setting
            {"precision": "fp16", "method": "qat", "qat_epochs": 1, "qat_lr": 1e-4},
            "quantize.method qat, quantize.qat_epochs, quantize.qat_lr not used",
            "(fix: set quantize.precision: int8 for QAT, or drop quantize.method, "
            "quantize.qat_epochs, quantize.qat_lr)",
        ),
    ],
)
def test_qat_settings_where_qat_does_not_run_are_warned_once(quantize, unused, fix):
    (note,) = _notes(_config(**quantize), IDLE_QAT)
    assert note.startswith(f"m.yaml: {unused}") and note.endswith(fix), note


@pytest.mark.parametrize(
    "quantize",
    [
        {"method": "qat", "qat_epochs": 5, "qat_lr": 1e-4},  # QAT runs: int8 is the default
        {"qat_epochs": 2, "qat_lr": None},  # given at their defaults, they change nothing
        {"precision": "fp16"},
    ],
)
def test_qat_settings_qat_reads_or_left_at_defaults_are_not_warned(quantize):
    assert _notes(_config(**quantize), IDLE_QAT) == []


@pytest.mark.parametrize(("precision", "target"), [("fp32", "host"), ("fp16", "jetson")])
def test_qat_for_a_float_engine_is_not_run(cnn_project, tmp_path, capsys, precision, target):
    """No QAT graph, history or metrics; warned once by the run and in the plan (method and
    qat_epochs in one note); the resume plan of the config without them finds every stage up to
    date."""
    cfg = config_of(cnn_project)
    cfg["distill"].update(epochs=1)
    cfg["quantize"].update(precision=precision, method="qat", qat_epochs=1)
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    unused = "quantize.method qat, quantize.qat_epochs not used"
    assert sum(unused in n for n in api.plan(path, target, run)["warnings"]) == 1
    capsys.readouterr()
    report = api.compress(path, target, run, quiet=True)
    out = capsys.readouterr().out
    assert out.count(IDLE_QAT) == 1 and f"{path}: {unused}" in out
    rec = json.loads((run / "manifest.json").read_text())["stages"]["distill"]
    assert not any("qat" in o for o in rec["outputs"]), rec["outputs"]
    assert not any(k.startswith("qat") for k in rec["metrics"]), rec["metrics"]
    assert not (run / "distill" / "student_qat.onnx").exists()
    assert not any(e.get("quantization") for e in report["engines"])
    del cfg["quantize"]["method"], cfg["quantize"]["qat_epochs"]
    plan = api.plan(write_yaml(path, cfg), target, run, resume=True)
    assert {s: plan["resume"][s] for s in COMPUTING} == dict.fromkeys(
        COMPUTING, "up to date, skipped"
    )
    assert not any(IDLE_QAT in n for n in plan.get("warnings", []))
