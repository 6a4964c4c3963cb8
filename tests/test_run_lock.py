"""Two kdc processes on one run directory: the second is refused, before it touches anything
(it used to delete the first one's temporaries as an interrupted run's, then interleave its
manifest writes and redo the stages the first was running)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny import config_of, write_yaml
from typer.testing import CliRunner

from kdc import api
from kdc.cli import app
from kdc.errors import UserError
from kdc.rundir import LOCK, RunBusy, RunDir

runner = CliRunner()
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"4242\\n")
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held(tmp_path):
    """A run directory whose lock another process holds (pid recorded as 4242), with a
    temporary that process is writing and a manifest of a started run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"stages": {"search": {"status": "running"}}}))
    (run / ".model.onnx.abc.tmp").write_text("being written")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run / LOCK)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    yield run
    proc.kill()
    proc.wait()


def test_a_second_process_on_a_run_directory_is_refused(cnn_project, tmp_path, held):
    cfg = config_of(cnn_project)
    cfg["distill"]["epochs"] = 1
    path = write_yaml(tmp_path / "model.yaml", cfg)
    before = sorted(p.name for p in held.iterdir())
    for call in (
        lambda: api.compress(path, "host", held, resume=True, quiet=True),
        lambda: api.compress(path, "host", held, quiet=True),
        lambda: api.build(path, "host", held, quiet=True),
    ):
        with pytest.raises(RunBusy, match=r"another kdc process \(pid 4242\) is writing"):
            call()
    # the other process's temporary and manifest are as they were
    assert sorted(p.name for p in held.iterdir()) == before
    assert (held / ".model.onnx.abc.tmp").read_text() == "being written"
    assert RunDir(held).writer() == "4242"
    # kdc inspect says the stage is being run, not that it was cut short
    res = runner.invoke(app, ["inspect", str(held)])
    assert "kdc process 4242 is writing the run now" in res.output
    assert "cut short" not in res.output


def test_the_lock_is_reentrant_and_released(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        with run.lock():  # api.verify holds it around run_stages
            assert run.writer() is None  # this process's own
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                HOLD.replace("LOCK_EX", "LOCK_EX | fcntl.LOCK_NB"),
                str(run / LOCK),
            ],
            capture_output=True,
            timeout=60,
        )
        assert probe.returncode != 0 and b"BlockingIOError" in probe.stderr
    with run.lock():  # released: taken again
        pass
    assert isinstance(RunBusy("x"), UserError)  # exit 2, one line


def test_a_directory_holding_only_the_lock_counts_as_empty(cnn_project, tmp_path):
    """A run interrupted before its first stage leaves its directory with only the lock file: a
    later run refused for bad input (found by the first stage) still leaves it as it found it."""
    cfg = config_of(cnn_project)
    cfg["student"] = {"layers": 2}  # a CNN teacher has no layers to keep: search refuses it
    path = write_yaml(tmp_path / "model.yaml", cfg)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text("")
    with pytest.raises(UserError, match="student.layers"):
        api.compress(path, "host", run, quiet=True)
    assert [p.name for p in run.iterdir()] in ([], [LOCK])


def test_a_file_system_without_locks_runs_unguarded(tmp_path, monkeypatch):
    """flock refused (ENOLCK on some network mounts): the run goes on, as before the lock."""
    import errno

    import kdc.rundir as rundir

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    run = RunDir(tmp_path / "run")
    with run.lock():
        assert run.writer() is None
