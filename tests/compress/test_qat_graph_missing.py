"""A QAT run's INT8 engine is distill's QAT graph (`distill/student_qat.onnx`): QAT writes it or
fails. A distill record without it (a manifest an older kdc wrote) is not done, so `--resume`
runs distill again and ships the QAT graph; build refuses a QAT run whose graph is missing
rather than ship a PTQ engine as the QAT run's, naming the file and the fix; a distill that ran
with other inputs is refused as such, whatever its record lacks."""

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


def test_resume_reruns_a_qat_distill_whose_record_lacks_its_graph(
    cnn_project, tmp_path, monkeypatch
):
    cfg = config_of(cnn_project)
    cfg["distill"].update(epochs=1)
    cfg["quantize"].update(method="qat", qat_epochs=1)
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    api.search(path, "host", run, quiet=True)
    api.distill(path, "host", run, quiet=True)
    api.export(path, "host", run, quiet=True)
    graph = (run / GRAPH).read_bytes()
    (run / GRAPH).unlink()  # removed by hand: distill's record names it, so it is not done
    code, out = _kdc("build", str(path), "--out", str(run))
    assert code == 2 and f"output {GRAPH} is missing" in out, out
    (run / GRAPH).write_bytes(graph)
    # build's own refusal, were the graph gone once distill was found done
    monkeypatch.setattr("kdc.stages.build.QAT_GRAPH", "absent.onnx")
    code, out = _kdc("build", str(path), "--out", str(run))
    assert code == 2 and "Traceback" not in out, out
    assert "quantize.method qat's INT8 graph is missing" in out, out
    assert f"fix: `kdc compress CONFIG --out {run} --resume` (it runs distill again)" in out, out
    monkeypatch.undo()
    # a distill record without the graph: not done, for build alone and for --resume
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["stages"]["distill"]["outputs"][GRAPH]
    recorded = manifest["stages"]["distill"]["input_hash"]
    # of other inputs too (a PTQ run now asked for QAT): that, the cause, is what is named
    manifest["stages"]["distill"]["input_hash"] = "0" * len(recorded)
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, out = _kdc("build", str(path), "--out", str(run))
    assert code == 2 and "stage 'distill' ran with other inputs" in out, out
    manifest["stages"]["distill"]["input_hash"] = recorded
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, out = _kdc("build", str(path), "--out", str(run))
    assert code == 2 and f"stage 'distill' did not record {GRAPH}, which it makes" in out, out
    assert f"`kdc compress CONFIG --out {run} --resume`" in out, out
    assert api.plan(path, "host", run, resume=True)["resume"]["distill"] == "runs"
    report = api.compress(path, "host", run, resume=True, quiet=True)
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert GRAPH in stages["distill"]["outputs"]
    int8 = next(e for e in report["engines"] if e["precision"] == "int8")
    assert int8["status"] == "built" and int8["quantization"]["method"] == "qat"
    # read from the shipped graph for QAT as for PTQ (it was recorded for PTQ alone)
    assert int8["quantization"]["weights"] == "int8 per-channel", int8["quantization"]
