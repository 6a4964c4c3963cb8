"""Running a malformed-input case through the CLI and checking it failed cleanly: one line (beside
any warnings, which -q shows), the exit code, no traceback, nothing written outside the case's run
directory. Shared by tests/test_malformed_inputs.py, tests/test_malformed_configs.py and
bench/reliability.py."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kdc.cli import app

runner = CliRunner()
FAST = {"distill": {"epochs": 0}, "verify": {"warmup": 0, "iterations": 10, "min_duration_s": 0}}


def snapshot(*roots: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under `roots`, except under `skip`."""
    out = {}
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file() and not (skip and p.is_relative_to(skip)):
                st_ = p.stat()
                out[str(p)] = (st_.st_size, st_.st_mtime_ns)
    return out


@dataclass
class Outcome:
    exit_code: int
    lines: list[str]  # the output's lines but its warnings (shown also with -q), kept apart
    warnings: list[str]
    outside_writes: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def run_case(args: list[str], root: Path, watched: tuple[Path, ...] = ()) -> Outcome:
    """Invoke the CLI; report its exit code, output lines and files written outside root/run
    (root, `watched` and the temp dir are snapshotted before and after)."""
    roots = (root, *watched, Path(tempfile.gettempdir()))
    before = snapshot(*roots, skip=root / "run")
    res = runner.invoke(app, [str(a) for a in args])
    after = snapshot(*roots, skip=root / "run")
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    warned = [ln for ln in lines if ln.strip().startswith("warning:")]
    return Outcome(res.exit_code, [ln for ln in lines if ln not in warned], warned, changed)


def assert_clean_failure(o: Outcome, code: int, *names: str) -> None:
    assert o.exit_code == code, o.text
    assert len(o.lines) == 1 and "Traceback" not in o.text, o.text
    for n in names:
        assert n in o.lines[0], (n, o.text)
    assert not o.outside_writes, o.outside_writes


@pytest.fixture(scope="module")
def private_tmp(tmp_path_factory):
    """A temp dir of this module's own, so a write to it by kdc shows. (onnxruntime imported
    before kdc set ORT_DISABLE_TELEMETRY writes a .ses file to TMPDIR: import it first.)"""
    import onnxruntime  # noqa: F401

    d = tmp_path_factory.mktemp("private-tmp")
    old, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(d), str(d)
    yield d
    tempfile.tempdir = old
    if old_env is None:
        os.environ.pop("TMPDIR")
    else:
        os.environ["TMPDIR"] = old_env


def yaml_file(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def compress(cfg: Path, *extra: str) -> list[str]:
    return ["compress", str(cfg), "--out", str(cfg.parent / "run"), "-q", *extra]
