"""`kdc compress` end to end through the CLI on tiny teachers: report fields, exit codes, and a
distilled student that beats an untrained one on learnable data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from tiny import bert_config, cnn_config, config_of, floors, write_yaml
from typer.testing import CliRunner

from kdc.cli import app

runner = CliRunner()


def _compress(config, out, target="host", *extra):
    return runner.invoke(
        app, ["compress", str(config), "--target", target, "--out", str(out), "-q", *extra]
    )


def _check_report(report: dict) -> None:
    assert report["kdc_version"] and report["run"]["config_sha256"]
    assert report["teacher"]["accuracy"]["engine"] == "onnxruntime-cpu-fp32"
    built = [e for e in report["engines"] if e["status"] == "built"]
    assert {e["precision"] for e in built} == {"fp32", "int8"}
    for e in built:
        lat = e["latency"]
        assert lat["kind"] == "measured" and lat["p50_ms"] <= lat["p99_ms"]
        assert {"device", "threads", "batch", "iterations", "cv"} <= set(lat)
        assert e["accuracy"]["engine"].startswith("onnxruntime")
    for e in report["engines"]:
        assert e.get("latency", {}).get("kind") in ("measured", "predicted", None)
    assert isinstance(report["passed"], bool) and report["constraints"]


@pytest.mark.slow
def test_cnn_compress_for_jetson(cnn_project, tmp_path):
    res = _compress(cnn_project, tmp_path / "run", "jetson")
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    _check_report(report)
    assert report["target"]["name"] == "jetson-orin-nano-8gb"
    trt = next(e for e in report["engines"] if e["engine"] == "tensorrt")
    assert trt["status"] == "bundle" and trt["latency"]["kind"] == "predicted"
    assert report["teacher"]["target_latency"]["engine"] == "tensorrt"  # what the model is of
    assert (run / trt["path"] / "build.sh").is_file()
    meta = json.loads((run / trt["path"] / "bundle.json").read_text())
    assert meta["parity_min_agreement"] == 0.75  # a classifier's classes are checked on device
    # a CNN has no preprocessing files: the bundle carries its input contract instead
    contract = json.loads((run / trt["path"] / "preprocessing" / "input.json").read_text())
    assert contract["input"]["shape"][1:] == [1, 8, 8] and contract["input"]["scale"] == "x / 16.0"
    assert contract["output"]["classes"] == report["data"]["labels"]
    for e in report["engines"]:  # the Jetson's latency model is TensorRT's: ORT's not predicted
        if e["status"] == "built":
            assert "target_latency" not in e and e["target_memory"]["kind"] == "predicted"
    assert report["student"]["params"] < report["teacher"]["params"] / 2
    assert report["student"]["export"]["exporter"] == "torch"  # not a Hugging Face model
    for f in ("report.md", "report.png", "report.html", "manifest.json"):
        assert (run / f).is_file()
    # the distilled student is far better than chance (10 classes) and near the teacher
    fp32 = next(e for e in report["engines"] if e.get("precision") == "fp32")
    assert fp32["accuracy"]["accuracy"] > 0.8
    # the shipped engine is the TensorRT one; its accuracy comes from a labelled stand-in
    assert trt["ships"] and trt["accuracy"]["engine"].startswith("onnxruntime-cpu-qdq-simulated")
    assert trt["accuracy"]["value"] > 0.8
    assert report["teacher"]["accuracy"]["accuracy"] > 0.9
    # the INT8 graph runs on the device, not this CPU: its graphs were compared, and its ONNX
    # Runtime engine is judged, with Q/DQ in float (this CPU's kernels beside, not gating)
    int8 = next(e for e in report["engines"] if e.get("precision") == "int8" and e.get("path"))
    assert "Q/DQ in float" in int8["quantization"]["loss"]["run_by"]
    assert int8["accuracy"]["engine"] == "onnxruntime-cpu-qdq-simulated"
    assert int8["accuracy_this_cpu"]["engine"] == "onnxruntime-cpu-int8"
    assert not int8.get("warnings")  # neither the saturation nor the speed flag: not shipped here
    # every file of the bundle is recorded: an edited build.sh is seen as an edited engine is;
    # `kdc bundle` rewriting the run's own bundle records it again
    recorded = json.loads((run / "manifest.json").read_text())["stages"]["build"]["outputs"]
    assert f"{trt['path']}/build.sh" in recorded and f"{trt['path']}/model.onnx" in recorded
    assert runner.invoke(app, ["bundle", str(run), "--target", "jetson"]).exit_code == 0
    res = runner.invoke(app, ["inspect", str(run)])  # verify judged the bundle written before
    assert res.exit_code == 1 and "CORRUPT" not in res.output, res.output
    assert "stage(s) verify, report were built from earlier outputs" in res.output
    res = runner.invoke(app, ["verify", str(run), "--target", "t4"])  # no T4 bundle yet
    assert "no device bundle for nvidia-t4 yet" in res.output
    assert f"`kdc bundle {run} --target nvidia-t4` writes one" in " ".join(res.output.split())
    assert runner.invoke(app, ["verify", str(run), "-q"]).exit_code == 0
    res = runner.invoke(app, ["inspect", str(run)])
    assert res.exit_code == 0 and "CORRUPT" not in res.output, res.output
    (run / trt["path"] / "build.sh").write_text("#!/bin/sh\necho edited\n")
    res = runner.invoke(app, ["inspect", str(run)])
    assert res.exit_code == 1 and "CORRUPT" in res.output and "build.sh" in res.output
    # the same run for another target: the Jetson bundle is not left beside the new build,
    # and one holding device results is moved aside (with a warning), not deleted
    (run / "build" / "bundle-nvidia-t4" / "results").mkdir(parents=True)
    (run / "build" / "bundle-nvidia-t4" / "bundle.json").write_text("{}")
    (run / "build" / "bundle_notes").mkdir()  # not a bundle
    res = _compress(cnn_project, run, "host", "--resume")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "holds the run for jetson-orin-nano-8gb: this run for host replaces its report" in said
    assert "build/bundle-nvidia-t4 holds device results" in res.output
    assert "moved to build/previous-bundle-nvidia-t4" in res.output
    assert (run / "build" / "previous-bundle-nvidia-t4" / "results").is_dir()
    assert sorted(p.name for p in (run / "build").glob("bundle*")) == ["bundle_notes"]

    # a GPU server's engine for a range of batches, on resume for another target: the bundle
    # builds batches 1 to 8 and the engine's memory is predicted at 8, the time at verify's 1
    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(cnn_project.parent / cfg["teacher"]["weights"])
    cfg["build"] = {"max_batch": 8}
    cfg["constraints"]["max_memory_mb"] = 100.0
    res = _compress(write_yaml(tmp_path / "batches.yaml", cfg), run, "t4", "--resume")
    assert res.exit_code == 0, res.output
    report = json.loads((run / "report.json").read_text())
    trt = next(e for e in report["engines"] if e["engine"] == "tensorrt")
    assert trt["memory"]["batch"] == 8 and trt["latency"]["batch"] == 1
    assert "memory_mb (MiB)" in res.output and "predicted at batch 8, tensorrt-int8" in res.output
    assert "--maxShapes=pixel_values:8x1x8x8" in (run / trt["path"] / "build.sh").read_text()


@pytest.mark.slow
def test_bert_compress_beats_untrained_student(bert_project, tmp_path):
    res = _compress(bert_project, tmp_path / "run")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    _check_report(report)
    assert report["student"]["architecture"]["num_hidden_layers"] == 2
    assert report["student"]["export"]["exporter"] == "optimum"  # a HF classifier: optimum-onnx
    assert report["student"]["export"]["last_layer"] == "cls-only"  # its pooler reads only [CLS]
    assert "last layer computes [CLS] only" in (tmp_path / "run" / "report.md").read_text()
    fp32 = next(e for e in report["engines"] if e.get("precision") == "fp32")
    # untrained: same student, zero epochs of distillation and a re-initialised head
    assert fp32["accuracy"]["accuracy"] >= 0.85
    assert fp32["parity"]["max_abs"] < 1e-3
    int8 = next(e for e in report["engines"] if e.get("precision") == "int8")
    assert int8["accuracy"]["accuracy"] >= fp32["accuracy"]["accuracy"] - 0.05
    # host: the INT8 graph ships on this CPU, so its own int8 kernels judge it
    assert int8["accuracy"]["engine"] == "onnxruntime-cpu-int8" and "accuracy_qdq_simulated" in int8
    # every timing says the attention-mask padding of the input it timed (the first eval row)
    paddings = {e["latency"]["padding"] for e in (fp32, int8)}
    assert len(paddings) == 1 and 0 <= paddings.pop() < 1
    # ONNX Runtime's INT8 graph has its masked softmaxes floored
    assert "masked-softmax floor on 2" in int8["optimization"]
    assert floors(tmp_path / "run" / int8["path"]) == 2


def test_constraint_failure_exits_1(cnn_project, tmp_path):
    cfg = config_of(cnn_project)
    cfg["constraints"] = {"latency_budget_ms": 1e-6}
    cfg["distill"]["epochs"] = 1
    path = write_yaml(tmp_path / "model.yaml", cfg)
    res = _compress(path, tmp_path / "run")
    assert res.exit_code == 1, res.output
    # -q hides progress, not the verdict: a quiet CI log still says what failed
    assert "FAIL latency_p99_ms" in res.output and res.output.split()[-1] == "FAILED"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["passed"] is False
    assert any(c["name"] == "latency_p99_ms" and not c["pass"] for c in report["constraints"])
    # resuming the finished run runs nothing and still says why it failed
    res = _compress(path, tmp_path / "run", "host", "--resume")
    assert res.exit_code == 1 and "up to date" not in res.output  # -q
    assert "FAIL latency_p99_ms" in res.output and res.output.split()[-1] == "FAILED"
    # kdc check reads the report (its structure, task and classes) and fails on the budget alone
    assert report["task"] and report["data"]["labels"]
    rp = str(tmp_path / "run" / "report.json")
    res = runner.invoke(app, ["check", rp, "--baseline", rp])
    assert res.exit_code == 1, res.output
    failed = [ln.split()[1] for ln in res.output.splitlines() if not ln.startswith("PASS")]
    assert failed == ["constraint.latency_p99_ms"], res.output


def test_a_search_with_no_student_under_the_budget_leaves_a_failed_report(cnn_project, tmp_path):
    """What a CI job uploads when the evolution search finds nothing to distill: report.json
    FAILED on the latency budget with the closest candidates, and no engine; `kdc check` against
    a baseline of a passing run fails; the next stage to run removes it."""
    cfg = config_of(cnn_project)
    cfg["search"] = {"strategy": "evolution", "population": 4, "cycles": 2}
    cfg["constraints"] = {"latency_budget_ms": 1e-9}
    run, path = tmp_path / "run", write_yaml(tmp_path / "model.yaml", cfg)
    res = _compress(path, run, "jetson")
    assert res.exit_code == 1 and "report: " in res.output, res.output
    report = json.loads((run / "report.json").read_text())
    assert report["passed"] is False and report["engines"] == [] and report["student"] is None
    (budget,) = report["constraints"]
    assert budget["name"] == "latency_p99_ms" and not budget["pass"]
    assert budget["source"] == "predicted" and budget["value"] > budget["limit"]
    search = report["search"]
    assert search["candidates_scored"] == 0 and 1 <= len(search["closest"]) <= 3
    assert search["rejected"] == "search/rejected.jsonl" and (run / search["rejected"]).is_file()
    assert report["failure"]["stage"] == "search"
    # REPORT.md's run.wall_s, search.wall_s and teacher.flops hold in a failed report too
    assert report["run"]["wall_s"] == search["wall_s"] > 0 and report["teacher"]["flops"] > 0
    assert report["run"]["invocation"]["stages_run"] == ["search"]
    # what the run assumed or left unused, as printed when it started
    assert any(": student.width not used" in w for w in report["warnings"])
    teacher = report["teacher"]["target_latency"]  # the search's prediction, labelled
    assert (
        teacher["kind"] == "predicted"
        and teacher["p50_ms"] == search["teacher_predicted_latency_ms"]
    )
    assert teacher["model"] and teacher["precision"] == "int8" and teacher["engine"] == "tensorrt"
    md = (run / "report.md").read_text()
    assert "closest predicted" in md
    assert "| teacher | – | int8 |" in md and f"{teacher['p50_ms']:.3g}"[:4] in md
    res = runner.invoke(app, ["inspect", str(run)])  # a failed run is not a healthy one
    assert res.exit_code == 1 and "search (failed)" in res.output, res.output
    assert "--target jetson" in res.output
    baseline = tmp_path / "baseline.json"  # a passing run's: its engines are missing here
    baseline.write_text(
        json.dumps(
            {
                **report,
                "engines": [
                    {
                        "engine": "tensorrt",
                        "precision": "int8",
                        "status": "bundle",
                        "latency": {"kind": "predicted", "p50_ms": 0.01},
                    }
                ],
            }
        )
    )
    res = runner.invoke(app, ["check", str(run / "report.json"), "--baseline", str(baseline)])
    assert res.exit_code == 1 and "MISSING" in res.output, res.output
    assert "tensorrt-int8" not in res.output.split("constraint.latency_p99_ms")[1]  # no engine
    assert "no student fits" in res.output  # the failed constraint's reason
    saved = tmp_path / "saved.json"
    res = runner.invoke(
        app, ["check", str(run / "report.json"), "--baseline", str(saved), "--update-baseline"]
    )
    assert "with no engine" in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["distill", str(path), "--target", "jetson", "--out", str(run)])
    line = " ".join(res.output.split())  # the next stage names why the search failed, not "re-run"
    assert res.exit_code == 2 and "stage 'search' failed: NoStudentFits: no student" in line
    assert "raise constraints.latency_budget_ms" in line and "mend what it names, then" in line
    cfg["constraints"] = {"latency_budget_ms": 10.0}  # a new search: the failed one's files go
    path = write_yaml(tmp_path / "model.yaml", cfg)
    res = runner.invoke(app, ["search", str(path), "--target", "jetson", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert not (run / "report.json").exists() and not (run / "report.md").exists()
    assert not (run / "search" / "rejected.jsonl").exists()


def test_bad_config_exits_2_with_one_line(tmp_path):
    data = cnn_config()
    data["distill"]["epochs"] = -1
    path = write_yaml(tmp_path / "model.yaml", data)
    res = _compress(path, tmp_path / "run")
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "distill.epochs" in lines[0] and "Traceback" not in res.output


def test_unknown_target_exits_2(cnn_project, tmp_path):
    res = _compress(cnn_project, tmp_path / "run", "jetsn")
    assert res.exit_code == 2 and "unknown target" in res.output


def test_dry_run_prints_plan(bert_project, tmp_path):
    res = runner.invoke(app, ["compress", str(bert_project), "--target", "jetson", "--dry-run"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["data"]["train"] == 400 and plan["data"]["eval"] == 120
    assert plan["target"]["name"] == "jetson-orin-nano-8gb"
    assert plan["stages"][0] == "search" and plan["stages"][-1] == "report"
    assert plan["quantize"] == "int8 (ptq)"
    # the profile's defaults the run will judge by (the memory limit was left out)
    assert plan["constraints"]["max_memory_mb"] == 2048
    assert plan["constraints"]["latency_budget_ms"] == 10.0


def test_validate_and_profiles_commands(cnn_project):
    assert runner.invoke(app, ["validate", str(cnn_project)]).exit_code == 0
    res = runner.invoke(app, ["profiles", "list"])
    assert res.exit_code == 0 and "jetson-orin-nano-8gb" in res.output
    res = runner.invoke(app, ["profiles", "show", "jetson"])
    assert res.exit_code == 0 and "source" in res.output
    assert runner.invoke(app, ["--version"]).output.startswith("kdc ")


def test_label_mismatch_is_a_user_error(bert_project, tmp_path):
    rows = np.array(["a,x", "b,y", "c,z"])
    (tmp_path / "three.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    cfg = bert_config(
        data={"source": "three.csv", "eval": None, "max_length": 16},
        teacher={"path": str(bert_project.parent / "teacher")},
    )
    path = write_yaml(tmp_path / "model.yaml", cfg)
    res = _compress(path, tmp_path / "run")
    assert res.exit_code == 2 and "labels" in res.output
