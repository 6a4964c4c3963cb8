"""Optional MLflow tracking: `kdc compress ... --mlflow URI` logs the config as params, accuracy
and latency per engine as metrics, report.* as artifacts; without mlflow it is a one-line error
before anything runs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from tiny import cnn_config, write_yaml
from typer.testing import CliRunner

from kdc import api
from kdc.cli import app
from kdc.tracking import flatten, report_metrics

runner = CliRunner()
SAMPLE = Path(__file__).parent / "fixtures" / "report_sample.json"


def _fake_run(run: Path) -> dict:
    """A finished run directory (the sample report) without running the pipeline."""
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE, run / "report.json")
    (run / "report.md").write_text("# report\n")
    (run / "manifest.json").write_text(json.dumps({"config": cnn_config()}))
    return json.loads(SAMPLE.read_text())


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local MLflow file store; the working directory is tmp_path (nothing may land there)."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install mlflow-skinny)")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # restored after the test ...
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # ... and absent during it: kdc sets it
    monkeypatch.chdir(tmp_path)
    return (tmp_path / "mlruns").as_uri()


def test_compress_logs_params_metrics_and_artifacts(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    cfg = write_yaml(tmp_path / "model.yaml", cnn_config())
    monkeypatch.setattr(api, "compress", lambda c, t, out, **kw: _fake_run(out))
    res = runner.invoke(
        app, ["compress", str(cfg), "--out", str(tmp_path / "run"), "--mlflow", store]
    )
    assert res.exit_code == 0, res.output
    client = MlflowClient(store)
    (exp,) = [e for e in client.search_experiments() if e.name == "sst2-minilm"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "jetson-orin-nano-8gb"
    assert run.info.run_id in res.output
    params, metrics = run.data.params, run.data.metrics
    assert params["distill.epochs"] == "4" and params["data.source"] == "sklearn:digits"
    assert params["teacher.kwargs.channels"] == "[16, 32]"
    assert metrics["onnxruntime-int8.accuracy"] == pytest.approx(0.8021)
    assert metrics["onnxruntime-int8.measured_p50_ms"] == pytest.approx(3.1)
    assert metrics["tensorrt-int8.predicted_p50_ms"] == pytest.approx(0.53)
    assert metrics["passed"] == 1.0
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.md"} <= arts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "model.yaml", "run"]


def test_logging_prints_no_mlflow_info_lines(store, tmp_path, capfd):
    """MLflow's own INFO line ("Experiment ... does not exist. Creating a new experiment.") came
    out even with -q; kdc says what it logged itself."""
    import logging

    import mlflow  # noqa: F401  (it sets its logger's level when imported)

    from kdc.tracking import log_run

    before = logging.getLogger("mlflow").level
    _fake_run(tmp_path / "run")
    log_run(store, tmp_path / "run")
    assert "Creating a new experiment" not in capfd.readouterr().err
    assert logging.getLogger("mlflow").level == before  # put back as it was


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("file:///x", "pip install mlflow"),  # mlflow not installed
        ("bogus://x", "error: field '--mlflow': MLflow has no tracking store for"),
    ],
)
def test_mlflow_problems_fail_before_the_run(tmp_path, monkeypatch, uri, said):
    if uri.startswith("file:"):
        monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    else:
        pytest.importorskip("mlflow")
    ran = []
    monkeypatch.setattr(api, "compress", lambda *a, **kw: ran.append(1))
    cfg = write_yaml(tmp_path / "model.yaml", cnn_config())
    res = runner.invoke(app, ["compress", str(cfg), "--mlflow", uri])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert said in lines[0] and "--mlflow" in lines[0] and not ran


def test_metrics_name_measured_and_predicted_latency():
    m = report_metrics(json.loads(SAMPLE.read_text()))
    assert m["teacher.accuracy"] == pytest.approx(0.8127)
    assert m["teacher.measured_p99_ms"] == pytest.approx(14.6)
    assert m["teacher.predicted_p50_ms"] == pytest.approx(2.41)
    assert "tensorrt-int8.measured_p50_ms" not in m  # never timed: only predicted


def test_a_timing_of_the_build_machine_for_another_target_is_named_so():
    """On a target kdc cannot time, a figure timed on this machine is not the target's: it is
    `measured_here_*` (as report.md says "measured here ... (not the target)"); the device's
    own timing, read back from its results, and any timing on a host target stay `measured_*`."""
    here = {"kind": "measured", "device": "Xeon (2 threads)", "p50_ms": 5.0, "p99_ms": 6.0}
    device = {"kind": "measured", "on_target": True, "p50_ms": 1.0, "p99_ms": 1.5}
    report = {
        "target": {"name": "jetson", "measurable": False},
        "teacher": {"latency": here},
        "engines": [{"engine": "tensorrt", "precision": "fp16", "latency": device}],
    }
    m = report_metrics(report)
    assert m["teacher.measured_here_p50_ms"] == 5.0 and "teacher.measured_p50_ms" not in m
    assert m["tensorrt-fp16.measured_p99_ms"] == 1.5
    host = report_metrics({**report, "target": {"name": "host", "measurable": True}})
    assert host["teacher.measured_p50_ms"] == 5.0


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": None}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "x",
        "e": "null",
    }


def test_a_stand_in_accuracy_is_logged_as_one():
    """A TensorRT engine's accuracy here is its graph's run by ONNX Runtime (a stand-in):
    logged as `tensorrt-int8.accuracy` it read as the engine's own; the name says stand-in."""
    report = json.loads(SAMPLE.read_text())
    trt = next(e for e in report["engines"] if e["engine"] == "tensorrt")
    trt["accuracy"] = {"metric": "accuracy", "value": 0.79, "stand_in": "qdq-in-float"}
    m = report_metrics(report)
    assert "tensorrt-int8.accuracy" not in m
    assert m["tensorrt-int8.accuracy_stand_in"] == pytest.approx(0.79)
