"""A QAT run's INT8 engine is distill's QAT graph (`distill/student_qat.onnx`): QAT writes it or
fails, so build refuses a QAT run whose graph is missing rather than ship a PTQ engine as the QAT
run's, naming the file and the fix, which then ships the QAT graph."""

from __future__ import annotations

import json

from tiny import config_of, write_yaml
from typer.testing import CliRunner

from kdc import api
from kdc.cli import app

runner = CliRunner()
GRAPH = "distill/student_qat.onnx"


def _kdc(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, [*args, "-q"])
    return res.exit_code, " ".join(res.output.split())  # rich wraps long lines


def test_build_refuses_a_qat_run_without_its_qat_graph(cnn_project, tmp_path):
    cfg = config_of(cnn_project)
    cfg["distill"].update(epochs=1)
    cfg["quantize"].update(method="qat", qat_epochs=1)
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    api.search(path, "host", run, quiet=True)
    api.distill(path, "host", run, quiet=True)
    api.export(path, "host", run, quiet=True)
    (run / GRAPH).unlink()  # removed by hand: distill's record names it, so it is not done
    code, out = _kdc("build", str(path), "--out", str(run))
    assert code == 2 and f"output {GRAPH} is missing" in out, out
    # a distill record without the graph (a distill that did not write it) is up to date for
    # `--resume`: build itself refuses, in one line naming the file and the fix
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["stages"]["distill"]["outputs"][GRAPH]
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, out = _kdc("compress", str(path), "--out", str(run), "--resume")
    assert code == 2 and "Traceback" not in out, out
    assert f"{run / GRAPH}: quantize.method qat's INT8 graph is missing" in out, out
    fix = f"`kdc distill CONFIG --out {run}`, then `kdc compress CONFIG --out {run} --resume`"
    assert fix in out, out
    assert json.loads((run / "manifest.json").read_text())["stages"]["build"]["status"] == "failed"
    assert not (run / "build" / "onnxruntime" / "model_int8.onnx").exists()
    # the fix: distill again, then resume; the QAT graph ships as the INT8 engine
    api.distill(path, "host", run, quiet=True)
    report = api.compress(path, "host", run, resume=True, quiet=True)
    int8 = next(e for e in report["engines"] if e["precision"] == "int8")
    assert int8["status"] == "built" and int8["quantization"]["method"] == "qat"
