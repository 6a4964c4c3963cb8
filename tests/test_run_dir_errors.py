"""A run directory after bad input or a failed stage: nothing that looks started is left, a
damaged manifest is a one-line error, and a failed stage says so."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from tiny import config_of, write_yaml
from typer.testing import CliRunner

from kdc import api
from kdc.cli import app
from kdc.errors import UserError

runner = CliRunner()


def _cfg(cnn_project, root, **data):
    cfg = config_of(cnn_project)
    cfg["distill"]["epochs"] = 1
    cfg["data"].update(data)
    return write_yaml(root / "model.yaml", cfg)


def _one_line_error(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize("field", ["data.source", "student.layers"])
def test_bad_input_leaves_no_run_directory(cnn_project, tmp_path, field):
    """Found before the run starts (a missing file), or by the first stage (teacher layers for a
    CNN student): a new --out is removed, an empty one left empty."""
    cfg = _cfg(cnn_project, tmp_path, **({"source": "missing.csv"} if field[0] == "d" else {}))
    if field == "student.layers":
        data = yaml.safe_load(cfg.read_text())
        cfg = write_yaml(cfg, {**data, "student": {"layers": 2}})
    for run in (tmp_path / "new", tmp_path / "empty"):
        if run.name == "empty":
            run.mkdir()
        res = runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"])
        assert field in _one_line_error(res)
        assert not run.exists() if run.name == "new" else not any(run.iterdir())


def test_out_that_is_a_file_is_a_user_error(cnn_project, tmp_path):
    """The real run and its --dry-run give the same one-line error (exit 2)."""
    target = tmp_path / "afile"
    target.write_text("keep me")
    for extra in (["-q"], ["--dry-run"]):
        res = runner.invoke(app, ["compress", str(cnn_project), "--out", str(target), *extra])
        line = _one_line_error(res)
        assert "--out" in line and "exists and is not a directory" in line, line
        assert target.read_text() == "keep me"


def test_verify_after_an_engine_was_edited_names_the_file(cnn_project, tmp_path):
    """`kdc verify RUN` with a built graph changed after the build says which file changed and
    how to rebuild, not that the build never ran."""
    cfg, run = _cfg(cnn_project, tmp_path), tmp_path / "run"
    api.compress(cfg, "host", run, quiet=True)
    with open(run / "build" / "onnxruntime" / "model_fp32.onnx", "ab") as f:
        f.write(b"edited")
    line = _one_line_error(runner.invoke(app, ["verify", str(run), "-q"]))
    assert "has not run" not in line, line
    assert "output build/onnxruntime/model_fp32.onnx is missing or was changed" in line, line
    assert "kdc build" in line and "--resume" in line, line


def test_failed_stage_is_marked_failed_and_finished_ones_kept(cnn_project, tmp_path, monkeypatch):
    import kdc.stages.distill

    def broken(ctx):
        raise UserError("no good", field="distill.lr")

    monkeypatch.setattr(kdc.stages.distill, "run", broken)
    run = tmp_path / "run"
    with pytest.raises(UserError):
        api.compress(_cfg(cnn_project, tmp_path), "host", run, quiet=True)
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["search"]["status"] == "done"
    assert stages["distill"]["status"] == "failed" and "no good" in stages["distill"]["error"]
    res = runner.invoke(app, ["inspect", str(run)])
    assert res.exit_code == 1 and "error: UserError: field 'distill.lr': no good" in res.output
    assert "distill (failed) did not finish" in res.output
    manifest = json.loads((run / "manifest.json").read_text())  # a run cut short (kill -9)
    manifest["stages"]["distill"] = {"status": "running", "started": "2026-01-01T00:00:00Z"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["inspect", str(run)])
    assert res.exit_code == 1 and "distill (running) did not finish" in res.output, res.output
    assert "cut short" in res.output and "error above" not in res.output, res.output  # none shown


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"stages": []}',
        '{"stages": {"search": []}}',
        '{"stages": {"search": {"outputs": []}}}',
    ],
)
def test_damaged_manifest_is_a_user_error(tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    for cmd in ("inspect", "verify"):
        line = _one_line_error(runner.invoke(app, [cmd, str(tmp_path)]))
        assert "manifest.json" in line


@pytest.mark.slow
def test_reverify_for_another_target_after_the_checkout_moved(cnn_project, tmp_path):
    """`kdc verify RUN --target T` re-verifies the run's engines for T without redoing (or
    refusing for) the stages built for its own target, also once the folder holding the config
    and the run has moved (a CI device runner checks out to its own path)."""
    a = tmp_path / "a"
    a.mkdir()
    cfg = _cfg(cnn_project, a)
    shutil.copy(cnn_project.parent / "teacher.safetensors", a / "weights.safetensors")
    data = yaml.safe_load(cfg.read_text())  # relative: verify loads the teacher from there
    data["teacher"]["weights"] = "weights.safetensors"
    cfg = write_yaml(cfg, data)
    api.compress(cfg, "jetson", a / "runs" / "ci", quiet=True)
    before = json.loads((a / "runs" / "ci" / "manifest.json").read_text())["stages"]
    b = tmp_path / "b"
    shutil.move(a, b)
    jetson = "jetson-orin-nano-8gb"
    for target, name in ((["--target", "t4"], "nvidia-t4"), (["-t", "host"], "host"), ([], jetson)):
        res = runner.invoke(app, ["verify", str(b / "runs" / "ci"), *target, "-q"])
        assert res.exit_code in (0, 1), res.output
        said = f"report.* now describe the run's engines verified for {name} (built for {jetson}"
        assert (said in res.output) == (name != jetson), res.output
        report = json.loads((b / "runs" / "ci" / "report.json").read_text())
        manifest = json.loads((b / "runs" / "ci" / "manifest.json").read_text())
        # the report is for the target asked; the run stays the Jetson's (a plain verify's)
        assert report["target"]["name"] == manifest["verified_for"]["name"] == name
        assert manifest["target"] == jetson
        # the host runs no TensorRT: the Jetson's bundle is reported unavailable there, untimed
        trt = next(e for e in report["engines"] if e["engine"] == "tensorrt")
        assert (trt["status"] == "unavailable") == (name == "host")
        assert ("latency" in trt) == (name != "host")
    for stage in ("search", "distill", "export", "build"):
        assert manifest["stages"][stage]["finished"] == before[stage]["finished"]


def test_bundle_and_device_results_before_the_build_name_the_stage(cnn_project, tmp_path):
    """`kdc bundle` and `kdc verify --device-results` read the build's engines: before the build
    stage (or after its outputs went) they say which stage to run, exit 2."""
    cfg, run = _cfg(cnn_project, tmp_path), tmp_path / "run"
    for stage in (api.search, api.distill, api.export):
        stage(cfg, "jetson", run, quiet=True)
    results = tmp_path / "results"
    results.mkdir()
    for args in (
        ["bundle", str(run), "--target", "jetson"],
        ["verify", str(run), "--device-results", str(results)],
    ):
        line = _one_line_error(runner.invoke(app, args))
        assert "stage 'build' has not run" in line and "kdc build" in line, line
    api.build(cfg, "jetson", run, quiet=True)
    (run / "build" / "engines.json").unlink()
    line = _one_line_error(runner.invoke(app, ["bundle", str(run), "--target", "jetson"]))
    assert "output build/engines.json is missing or was changed" in line, line


def test_an_unwritable_run_directory_is_a_one_line_error(cnn_project, tmp_path, monkeypatch):
    """A run directory that exists but cannot be written in: refused before the run starts."""
    import kdc.rundir

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(kdc.rundir.tempfile, "mkstemp", refused)
    cfg = _cfg(cnn_project, tmp_path)
    line = _one_line_error(runner.invoke(app, ["compress", str(cfg), "--out", str(run)]))
    assert line == (
        f"error: {run}: cannot write in the run directory (Operation not permitted) (fix: make "
        "it writable (kdc compress: or pass another --out))"
    )


def test_a_write_refused_during_a_stage_is_a_one_line_error(cnn_project, tmp_path, monkeypatch):
    """A run directory made read-only (or full) during a run: exit 2 naming the file, not an
    internal error; the stage is marked failed."""
    import kdc.stages.distill

    def unwritable(ctx):
        raise PermissionError(13, "Permission denied", str(ctx.run / "distill" / "student"))

    monkeypatch.setattr(kdc.stages.distill, "run", unwritable)
    run = tmp_path / "run"
    line = _one_line_error(
        runner.invoke(app, ["compress", str(_cfg(cnn_project, tmp_path)), "--out", str(run), "-q"])
    )
    assert line.startswith(f"error: {run}: stage 'distill' cannot write {run}/distill/student")
    assert "(Permission denied)" in line and "pass another --out" in line
    assert (
        json.loads((run / "manifest.json").read_text())["stages"]["distill"]["status"] == "failed"
    )

    def unreadable(ctx):  # outside the run directory: not blamed on it
        raise PermissionError(13, "Permission denied", "/data/private.csv")

    monkeypatch.setattr(kdc.stages.distill, "run", unreadable)
    args = ["compress", str(_cfg(cnn_project, tmp_path)), "--out", str(run), "-q", "--resume"]
    line = _one_line_error(runner.invoke(app, args))
    assert line == (
        "error: stage 'distill' was refused /data/private.csv (Permission denied) (fix: check "
        "that file's permissions and the free space of its file system)"
    )


def test_a_non_empty_directory_kdc_did_not_write_is_refused(cnn_project, tmp_path):
    """--out naming the user's own folder: kdc would replace its build/ and report files, so it
    refuses it (one line naming --out) and touches nothing."""
    own = tmp_path / "mine"
    (own / "build" / "onnxruntime").mkdir(parents=True)
    (own / "build" / "onnxruntime" / "my_model.onnx").write_text("x")
    cfg = _cfg(cnn_project, tmp_path)
    line = _one_line_error(runner.invoke(app, ["search", str(cfg), "--out", str(own), "-q"]))
    assert "'--out'" in line and "not a kdc run directory" in line
    assert (own / "build" / "onnxruntime" / "my_model.onnx").read_text() == "x"
    assert sorted(p.name for p in own.iterdir()) == ["build"]
    dry = runner.invoke(app, ["compress", str(cfg), "--out", str(own), "--dry-run"])
    assert "not a kdc run directory" in _one_line_error(dry)  # refused as the run would be
    kept = tmp_path / "kept"  # a folder kept in git: only hidden files in it
    kept.mkdir()
    (kept / ".gitkeep").write_text("")
    res = runner.invoke(app, ["search", str(cfg), "--out", str(kept), "-q"])
    assert res.exit_code == 0, res.output


def test_a_stage_alone_on_a_new_run_suggests_the_target_it_was_given(cnn_project, tmp_path):
    """`kdc distill --target jetson` before any search: the fix keeps `--target jetson` (it
    suggested the host default, which the next step then refused as another target)."""
    cfg, run = _cfg(cnn_project, tmp_path), tmp_path / "run"
    args = ["distill", str(cfg), "--target", "jetson", "--out", str(run)]
    res = runner.invoke(app, args)
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and "stage 'search' has not run" in line, line
    assert f"kdc search CONFIG --target jetson-orin-nano-8gb --out {run}" in line, line


def test_a_student_that_does_not_load_names_the_run_not_the_teacher(
    cnn_project, tmp_path, monkeypatch
):
    """The run's distill/student not loading (a library upgraded between stages): export's
    error names that directory and the distill stage, not the config's teacher.path its
    loaders name for a teacher."""
    import kdc.models

    cfg = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    for stage in ("search", "distill"):
        assert runner.invoke(app, [stage, str(cfg), "--out", str(run), "-q"]).exit_code == 0

    def fails(directory, max_length=128):
        raise UserError("cannot load model: config.json", field="teacher.path", fix="check it")

    monkeypatch.setattr(kdc.models, "load_student", fails)
    line = _one_line_error(runner.invoke(app, ["export", str(cfg), "--out", str(run), "-q"]))
    assert line.startswith(f"error: {run / 'distill' / 'student'}: the run's distilled student")
    assert "teacher.path" not in line and "run the distill stage again" in line


def _finished_run(run, name="other"):
    """A run directory holding another config's finished run (its manifest, report and search
    output): the files by path and content."""
    (run / "search").mkdir(parents=True)
    (run / "report.json").write_text('{"verdict": "pass"}\n')
    (run / "search" / "student.json").write_text("{}\n")
    done = {"status": "done", "outputs": {}}
    stages = {"search": done, "report": done}
    (run / "manifest.json").write_text(json.dumps({"config": {"name": name}, "stages": stages}))
    return _files(run)


def _files(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_student_that_does_not_fit_is_refused_before_the_run_is_touched(tmp_path):
    """A CNN's student.architecture (stage_depth beyond the teacher's blocks) was checked only in
    the search stage, after `kdc compress` had replaced another config's run in --out (its
    report removed, its manifest rewritten): now the preflight refuses it, as validate does."""
    from preflight_projects import config

    cfg = config(tmp_path, name="b", student={"architecture": {"stage_depth": [5, 5]}})
    run = tmp_path / "out"
    before = _finished_run(run)
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"])
    line = _one_line_error(res)
    assert "student.architecture" in line and "model.yaml" in line, line
    assert _files(run) == before | {".kdc.lock": _files(run)[".kdc.lock"]}
    assert "student.architecture" in _one_line_error(runner.invoke(app, ["validate", str(cfg)]))


def test_a_stage_failing_on_bad_input_keeps_the_run_it_replaces(tmp_path):
    """A first stage refusing the input (teacher layers for a CNN student, found as the search
    builds it) puts back the run that was in --out, as it was: its report, manifest and stage
    outputs; nothing of the failed run, nor the copy it kept, is left."""
    from preflight_projects import config

    cfg = config(tmp_path, name="b", student={"layers": 2})
    run = tmp_path / "out"
    before = _finished_run(run)
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(run)])
    assert res.exit_code == 2 and "student.layers" in res.output, res.output
    assert "holds the run it held before" in res.output
    after = _files(run)
    assert after.pop(".kdc.lock") is not None and after == before
    assert sorted(p.name for p in run.iterdir()) == [
        ".kdc.lock",
        "manifest.json",
        "report.json",
        "search",
    ]


def test_a_first_stage_failing_a_constraint_keeps_its_own_report(tmp_path):
    """Only bad input puts the previous run back: a search finding no student under the budget
    (exit 1) is this run's result, and its failed report replaces the previous one, which a CI
    job would otherwise read as this run's."""
    from preflight_projects import config

    search = {"strategy": "evolution", "population": 4, "cycles": 2}
    cfg = config(tmp_path, name="b", search=search, constraints={"latency_budget_ms": 1e-9})
    run = tmp_path / "out"
    _finished_run(run)
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"])
    assert res.exit_code == 1 and "holds the run it held before" not in res.output, res.output
    report = json.loads((run / "report.json").read_text())
    assert report["passed"] is False and report["failure"]["stage"] == "search"
    assert (run / "search" / "rejected.jsonl").is_file()
