"""Ctrl-C stops a run cleanly: exit 130, one line saying how to resume, finished stages kept,
no temporary files left; `--resume` then continues. An internal error (exit 3) keeps its
traceback in the run directory."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
from test_reliability import isolated_env, project_config, stage_status, start, wait_until
from tiny import cnn_config, write_yaml
from typer.testing import CliRunner

from kdc import pipeline
from kdc.cli import app
from kdc.pipeline import StageOutput
from kdc.rundir import read_json, write_json

runner = CliRunner()


def _fake_stages(
    fail_at: str | None,
    how=lambda: os.kill(os.getpid(), signal.SIGINT),
    reads: tuple[str, ...] = ("name",),
):
    """Stages that each write one file and read the config's `reads`; the one named `fail_at`
    calls `how` (default: presses Ctrl-C) half-way."""

    def make(name: str):
        def fn(ctx) -> StageOutput:
            out = write_json(ctx.run / name / "out.json", {"stage": name})
            if name == fail_at:
                how()
            return StageOutput([out])

        return fn

    return [pipeline.Stage(n, make(n), lambda cfg: reads) for n in pipeline.STAGE_NAMES]


def test_sigint_exits_130_and_resume_continues(tmp_path, monkeypatch):
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    args = ["compress", str(cfg), "--out", str(run), "-q"]
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages("export"))
    before = signal.getsignal(signal.SIGINT)
    res = runner.invoke(app, args)
    assert res.exit_code == 130
    said = [ln.strip() for ln in res.output.splitlines() if ln.strip()]
    lines = [ln for ln in said if not ln.startswith("warning: teacher.weights is not set")]
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in res.output
    status = stage_status(run)
    assert status == {"search": "done", "distill": "done", "export": "running"}
    assert not list(run.rglob(".*.tmp*"))
    # the handler restored (the default one, or SIG_IGN where the suite runs in the background)
    assert signal.getsignal(signal.SIGINT) is before

    finished = {
        k: v["finished"]
        for k, v in read_json(run / "manifest.json")["stages"].items()
        if "finished" in v
    }
    (run / "export" / ".out.json.k1ll3d.tmp").write_text("{half")  # as a SIGKILL leaves it
    (run / "export" / ".student.x2.tmp").mkdir()
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(None))
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert not list(run.rglob(".*.tmp"))  # stale temporaries removed
    after = read_json(run / "manifest.json")["stages"]
    assert all(after[k]["finished"] == v for k, v in finished.items())
    assert set(stage_status(run).values()) == {"done"}


def test_an_interrupted_stage_command_says_to_run_it_again(tmp_path, monkeypatch):
    """`kdc distill` has no --resume (it continues from its checkpoint by itself): the line
    must not send the user to an option the command refuses."""
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages("distill"))
    assert runner.invoke(app, ["search", str(cfg), "--out", str(run), "-q"]).exit_code == 0
    res = runner.invoke(app, ["distill", str(cfg), "--out", str(run), "-q"])
    assert res.exit_code == 130 and "run the same command to continue" in res.output, res.output


def test_sigterm_stops_like_ctrl_c_and_a_stale_report_is_gone(tmp_path, monkeypatch):
    """A CI job's timeout or cancel sends SIGTERM: the run stops as for Ctrl-C (exit 143), and
    the report of the run's previous config is not left for `kdc check` to read."""
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    args = ["compress", str(cfg), "--out", str(run), "-q"]
    seeded = ("name", "seed")
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(None, reads=seeded))
    assert runner.invoke(app, args).exit_code == 0
    assert (run / "report" / "out.json").is_file()  # the report stage's output
    (run / "report.md").write_text("mine")  # not the run's: left alone
    write_yaml(cfg, cnn_config(weights=None, seed=1))
    sigterm = lambda: os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages("distill", sigterm, seeded))
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 143, res.output
    last = res.output.strip().splitlines()[-1]  # after the weightless teacher's warning
    assert last.startswith("interrupted (SIGTERM): finished stages are kept")
    status = stage_status(run)
    assert status["search"] == "done" and status["distill"] == "running"
    assert not (run / "report" / "out.json").exists()
    assert (run / "report.md").read_text() == "mine"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_a_library_turned_into_another_error_still_stops_the_run(
    tmp_path, monkeypatch, sig
):
    def converting_library():  # catches the interrupt and raises its own error
        try:
            os.kill(os.getpid(), sig)
        except BaseException as e:
            raise RuntimeError("trace failed") from e

    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages("distill", converting_library))
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"])
    assert res.exit_code == 128 + sig and "--resume" in res.output, res.output
    assert stage_status(run) == {"search": "done", "distill": "running"}


@pytest.mark.slow
def test_ctrl_c_on_a_real_run(cnn_project, tmp_path):
    cfg, run = project_config(cnn_project, tmp_path), tmp_path / "run"
    proc = start(cfg, run, isolated_env(tmp_path))
    assert wait_until(lambda: stage_status(run).get("distill") == "running", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in err.strip().splitlines()[-1]
    assert stage_status(run) == {"search": "done", "distill": "running"}
    assert not list(run.rglob(".*.tmp*"))


def test_sigint_swallowed_by_a_library_still_stops_the_run(tmp_path, monkeypatch):
    def swallowing_library():  # torch-pruning's tracing retries after a bare `except:`
        with contextlib.suppress(BaseException):
            os.kill(os.getpid(), signal.SIGINT)

    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages("distill", swallowing_library))
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"])
    assert res.exit_code == 130 and "--resume" in res.output
    assert stage_status(run) == {"search": "done", "distill": "running"}


def test_internal_error_in_the_default_run_dir_keeps_the_traceback_there(tmp_path, monkeypatch):
    def bug():
        raise RuntimeError("a bug")

    cfg = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages("distill", bug))
    res = runner.invoke(app, ["compress", str(cfg), "-q"])
    assert res.exit_code == 3
    (log,) = (tmp_path / "runs").glob("*/crash-*.txt")
    assert log.name in res.output and "RuntimeError: a bug" in log.read_text()


def test_internal_error_keeps_the_traceback_in_the_run_dir(tmp_path, monkeypatch):
    def bug():
        raise RuntimeError("a bug")

    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages("distill", bug))
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"])
    assert res.exit_code == 3
    (log,) = run.glob("crash-*.txt")
    assert str(log) in res.output and "RuntimeError: a bug" in log.read_text()
    # the stage that raised is marked failed (a killed one stays "running" for --resume)
    assert stage_status(run) == {"search": "done", "distill": "failed"}
    assert "RuntimeError: a bug" in read_json(run / "manifest.json")["stages"]["distill"]["error"]


def test_a_stage_run_alone_leaves_the_report_stale_not_corrupt(tmp_path, monkeypatch):
    """Re-running one stage removes the report it outdates and says so in the manifest:
    `kdc inspect` shows the report stale (exit 0), not its deleted files as corrupt."""
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(None))
    assert runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"]).exit_code == 0
    res = runner.invoke(app, ["export", str(cfg), "--out", str(run), "-q"])
    assert res.exit_code == 0, res.output
    report = read_json(run / "manifest.json")["stages"]["report"]
    assert report == {"status": "stale", "reason": "stage 'export' ran after it"}
    assert not (run / "report" / "out.json").exists()
    res = runner.invoke(app, ["inspect", str(run)])
    assert res.exit_code == 0 and "CORRUPT" not in res.output, res.output


def test_stages_built_before_an_earlier_stage_ran_again_are_outdated(tmp_path, monkeypatch):
    """`kdc search` alone with another config after a finished run: the later stages were built
    from the old search. `kdc verify` refuses them (it reported the old engines under the new
    config) and `kdc inspect` flags them (exit 1); `--resume` redoes them."""
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"

    def stages():
        def make(name: str):
            def fn(ctx) -> StageOutput:
                return StageOutput([write_json(ctx.run / name / "out.json", ctx.cfg.seed)])

            return fn

        return [pipeline.Stage(n, make(n), lambda cfg: ("seed",)) for n in pipeline.STAGE_NAMES]

    monkeypatch.setattr(pipeline, "_stages", stages)
    assert runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"]).exit_code == 0
    other = write_yaml(tmp_path / "other.yaml", {**cnn_config(weights=None), "seed": 1})
    assert runner.invoke(app, ["search", str(other), "--out", str(run), "-q"]).exit_code == 0
    res = runner.invoke(app, ["verify", str(run), "-q"])
    assert res.exit_code == 2, res.output
    assert "stage 'distill' was built from earlier outputs of 'search'" in res.output
    res = runner.invoke(app, ["bundle", str(run), "--target", "jetson"])  # of the old engines
    assert (
        res.exit_code == 2
        and "stage 'build' was built from earlier outputs of 'search' (it ran again since)"
        in res.output
    ), res.output
    res = runner.invoke(app, ["inspect", str(run)])
    assert res.exit_code == 1 and "distill, export, build, verify were built from" in res.output
    res = runner.invoke(app, ["compress", str(other), "--out", str(run), "-q", "--resume"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["inspect", str(run)]).exit_code == 0


def test_verify_after_the_data_changed_says_so(tmp_path, monkeypatch):
    """`kdc verify` takes the finished stages as built; when the teacher or data files changed
    since (images added to a folder re-split train/eval), it says so instead of passing off the
    new eval split's figures silently."""
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"

    def stages():
        def make(name: str):
            def fn(ctx) -> StageOutput:
                rel = "report.json" if name == "report" else f"{name}/out.json"
                return StageOutput([write_json(ctx.run / rel, {"stage": name})])

            return fn

        return [pipeline.Stage(n, make(n), lambda cfg: ("name",)) for n in pipeline.STAGE_NAMES]

    monkeypatch.setattr(pipeline, "_stages", stages)
    monkeypatch.setattr(pipeline, "inputs_fingerprint", lambda cfg: "before")
    assert runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"]).exit_code == 0
    res = runner.invoke(app, ["verify", str(run), "-q"])
    assert res.exit_code == 0 and "changed since" not in res.output, res.output
    monkeypatch.setattr(pipeline, "inputs_fingerprint", lambda cfg: "after")
    res = runner.invoke(app, ["verify", str(run), "-q"])
    assert res.exit_code == 0, res.output
    assert "the teacher or data files changed since stage 'search' ran" in res.output


def test_a_stage_refused_for_an_unready_one_leaves_the_manifest_as_it_was(tmp_path, monkeypatch):
    """`kdc export` for another target than the run's fails on the earlier stages (built for
    the run's): the run still says its own target, so a later `kdc verify` is for it."""
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(None))
    args = ["--out", str(run), "-q"]
    assert runner.invoke(app, ["compress", str(cfg), "--target", "jetson", *args]).exit_code == 0
    before = read_json(run / "manifest.json")
    res = runner.invoke(app, ["export", str(cfg), "--target", "host", *args])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "stage 'search' ran with other inputs" in said
    assert "(the run is for jetson-orin-nano-8gb, not host)" in said
    assert "pass --target jetson-orin-nano-8gb (the run's target)" in said
    after = read_json(run / "manifest.json")
    for key in ("target", "profile", "verified_for"):
        assert after[key] == before[key], key


def test_a_stage_alone_for_another_target_is_refused_before_any_note(tmp_path, monkeypatch):
    """`kdc build` for another target than a finished run's is refused on its earlier stages
    (the run's target's), and says nothing before that of replacing the run's report; the fix
    names the run's target and how to redo the run for this one, which then says it."""
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(None))
    assert runner.invoke(app, ["compress", str(cfg), "--out", str(run)]).exit_code == 0
    write_json(run / "report.json", {"passed": True})  # the fake report stage writes none
    res = runner.invoke(app, ["build", str(cfg), "--target", "jetson", "--out", str(run)])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "replaces" not in said, res.output
    assert (
        f"error: {run}: stage 'search' ran with other inputs (config, target, teacher or an "
        "earlier stage changed) (the run is for host, not jetson-orin-nano-8gb)" in said
    )
    assert (
        "pass --target host (the run's target), or redo the run for jetson-orin-nano-8gb, "
        "replacing its report: `kdc compress CONFIG --target jetson-orin-nano-8gb --out "
        f"{run} --resume`; or pass another --out" in said
    )
    assert read_json(run / "manifest.json")["target"] == "host"
    res = runner.invoke(app, ["compress", str(cfg), "-t", "jetson", "--out", str(run), "--resume"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "this run for jetson-orin-nano-8gb replaces its report" in said


def test_a_resume_refused_for_its_data_leaves_the_manifest_as_it_was(tmp_path, monkeypatch):
    """A config from another folder whose data is refused does not move the run's config base
    directory (a later `kdc verify` would read the data from there)."""
    cfg, run = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)), tmp_path / "run"
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(None, reads=("name", "data")))
    assert runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"]).exit_code == 0
    before = read_json(run / "manifest.json")
    bad = cnn_config(weights=None)
    bad["data"]["eval_fraction"] = 0.9995  # leaves 1 training row: refused when data are read
    (tmp_path / "elsewhere").mkdir()
    other = write_yaml(tmp_path / "elsewhere" / "model.yaml", bad)
    res = runner.invoke(app, ["compress", str(other), "--out", str(run), "--resume", "-q"])
    assert res.exit_code == 2 and "data.eval_fraction" in res.output, res.output
    after = read_json(run / "manifest.json")
    for key in ("config_file", "config_base_dir", "config_base_dir_from_run", "config"):
        assert after[key] == before[key], key


def test_an_out_directory_holding_another_run_is_replaced_only_on_purpose(tmp_path, monkeypatch):
    """--resume (or one stage) into another config's run is refused; a fresh compress says it
    replaces that run, as --dry-run does."""
    run = tmp_path / "run"
    first = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None))
    second = write_yaml(tmp_path / "other.yaml", cnn_config(weights=None, name="other"))
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(None))
    args = ["--out", str(run), "-q"]
    assert runner.invoke(app, ["compress", str(first), *args]).exit_code == 0
    for cmd in (["compress", str(second), "--resume"], ["export", str(second)]):
        res = runner.invoke(app, [*cmd, *args])
        assert res.exit_code == 2, res.output
        assert f"field '--out': {run} holds the run 'tinycnn', not 'other'" in res.output
    res = runner.invoke(app, ["compress", str(second), "--out", str(run), "--dry-run"])
    assert f"{run} holds the run 'tinycnn': this run of 'other' replaces it" in res.output
    res = runner.invoke(app, ["compress", str(second), *args, "--resume", "--dry-run"])
    assert res.exit_code == 2 and "holds the run 'tinycnn', not 'other'" in res.output
    res = runner.invoke(app, ["compress", str(second), *args])
    assert res.exit_code == 0 and f"{run} holds the run 'tinycnn'" in res.output, res.output
    assert read_json(run / "manifest.json")["config"]["name"] == "other"


def test_a_run_of_another_config_file_of_the_same_name_is_replaced_with_a_warning(
    tmp_path, monkeypatch
):
    """Two config files naming one run (`kdc init` names it for the model folder): the second's
    compress replaced the first's run without a word; it now says whose run it replaces, while
    the same file run again (or resumed) replaces nothing of another config."""
    run = tmp_path / "run"
    first = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None))
    (tmp_path / "b").mkdir()
    second = write_yaml(tmp_path / "b" / "model.yaml", cnn_config(weights=None))
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(None))
    args = ["--out", str(run)]
    assert runner.invoke(app, ["compress", str(first), *args]).exit_code == 0
    res = runner.invoke(app, ["compress", str(first), *args])
    assert res.exit_code == 0 and "replaces it" not in res.output, res.output
    res = runner.invoke(app, ["compress", str(second), *args])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"{run} holds the run of {first}: this run of {second}" in said
    res = runner.invoke(app, ["compress", str(first), *args, "--resume"])
    assert res.exit_code == 0 and "replaces it" not in res.output, res.output
