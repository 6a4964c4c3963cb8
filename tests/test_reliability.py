"""Reliability and safety: a SIGKILLed run resumes to the same result, redoing only unfinished
stages and never trusting a half-written artifact; the same config and seed give the same
student and metrics; nothing is written outside the run directory; loading is safe (audit);
free disk space is checked before engines are built.

The helpers here also drive bench/reliability.py (every stage, several random kill points)."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from malformed import snapshot
from tiny import config_of, write_yaml

from kdc import api
from kdc.errors import UserError
from kdc.rundir import RunDir, read_json

KDC_ROOT = Path(__file__).resolve().parent.parent
KDC = KDC_ROOT / "kdc"
MPL_CACHE = re.compile(r"/home/\.cache/matplotlib/fontlist-[^/]*\.json$")


# ---------------------------------------------------------------- helpers (bench uses them too)
def project_config(cnn_project: Path, root: Path, epochs: int = 2) -> Path:
    """The tiny CNN project's config in `root` (teacher weights by absolute path)."""
    cfg = config_of(cnn_project)
    cfg["distill"]["epochs"] = epochs
    # one INT8 backend: `auto` picks between two by timing them on this (busy) machine, so two
    # runs of the same student could ship different graphs
    cfg["quantize"]["ptq"] = "onnxruntime"
    root.mkdir(parents=True, exist_ok=True)
    return write_yaml(root / "model.yaml", cfg)


def isolated_env(root: Path) -> dict[str, str]:
    """Environment with a HOME and TMPDIR of its own, so writes there can be seen, the kdc under
    test first on the path (whatever copy pip installed last), and one intra-op thread as the
    in-process reference run has (tests/conftest.py): float sums, and so the trained weights,
    depend on the thread count."""
    for d in ("home", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(KDC_ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
    }


def start(cfg: Path, run: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    """`kdc compress` in a subprocess (stdout/stderr captured)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdc",
            "compress",
            str(cfg),
            "--target",
            "host",
            "--out",
            str(run),
            "-q",
            *extra,
        ],
        env=env,
        cwd=cfg.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stage_status(run: Path) -> dict[str, str]:
    """Stage -> status from the manifest (empty before it exists)."""
    try:
        return {k: v.get("status") for k, v in read_json(run / "manifest.json")["stages"].items()}
    except (FileNotFoundError, UserError, KeyError):
        return {}


def wait_until(cond, proc: subprocess.Popen, timeout: float = 600.0) -> bool:
    """Poll `cond()` every 5 ms until true; False if the process ended or time ran out first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def state_after_kill(run: Path) -> dict:
    """What a killed run left: stage statuses, whether every stage marked done still has intact
    outputs, and temporary files left beside artifacts."""
    rd = RunDir(run)
    status = stage_status(run)
    return {
        "stages": status,
        "done_intact": all(not rd.verify_outputs(s) for s, st in status.items() if st == "done"),
        "temp_files": sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp*")),
    }


def finished(run: Path) -> dict[str, str]:
    """Stage -> finish time of stages marked done."""
    stages = read_json(run / "manifest.json")["stages"]
    return {k: v["finished"] for k, v in stages.items() if v.get("status") == "done"}


def student_sha(run: Path) -> str:
    """sha256 of the distilled student's weights."""
    weights = run / "distill" / "student" / "model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def result_of(run: Path) -> dict:
    """The figures a resumed run must reproduce: student architecture and accuracies."""
    r = read_json(run / "report.json")
    return {
        "architecture": r["student"]["architecture"],
        "teacher": r["teacher"]["accuracy"]["value"],
        "engines": {
            f"{e['engine']}-{e['precision']}": e["accuracy"]["value"]
            for e in r["engines"]
            if "accuracy" in e
        },
    }


def outside_writes(before: dict, after: dict) -> list[str]:
    """Files created or changed between two snapshots, matplotlib's font cache (built once per
    HOME, shared by every program) excepted."""
    changed = [k for k in set(before) | set(after) if before.get(k) != after.get(k)]
    return sorted(k for k in changed if not MPL_CACHE.search(k))


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def reference(cnn_project, tmp_path_factory):
    """An uninterrupted in-process run: (config, run dir)."""
    root = tmp_path_factory.mktemp("reference")
    cfg = project_config(cnn_project, root)
    api.compress(cfg, "host", root / "run", quiet=True)
    return cfg, root / "run"


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_result(reference, tmp_path):
    """Tolerance: none. On one machine with the same threads the runs are bitwise equal."""
    cfg, run = reference
    api.compress(cfg, "host", tmp_path / "run", quiet=True)
    assert student_sha(run) == student_sha(tmp_path / "run")
    assert result_of(run) == result_of(tmp_path / "run")
    report = read_json(run / "report.json")["run"]
    assert report["seed"] == 0 and report["trust_remote_code"] is False
    assert {"python", "torch", "onnx", "onnxruntime"} <= set(report["libraries"])


@pytest.mark.slow
def test_sigkill_in_distill_then_resume(reference, tmp_path):
    """Kill after the first distillation epoch's checkpoint; resume redoes distill from that
    checkpoint and everything after it, not search, and matches the uninterrupted run bitwise. The
    subprocesses write nothing outside the run directory."""
    ref_cfg, ref_run = reference
    cfg = write_yaml(tmp_path / "model.yaml", yaml.safe_load(ref_cfg.read_text()))
    run, env = tmp_path / "run", isolated_env(tmp_path)
    watched = (tmp_path, Path(yaml.safe_load(cfg.read_text())["teacher"]["weights"]).parent)
    before = snapshot(*watched, skip=run)
    proc = start(cfg, run, env)
    ckpt = run / "distill" / "checkpoint" / "last.pt"
    assert wait_until(ckpt.is_file, proc), proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = state_after_kill(run)
    assert killed["stages"]["distill"] == "running" and killed["done_intact"]
    done_before = finished(run)
    proc = start(cfg, run, env, "--resume")
    out, errs = proc.communicate(timeout=900)
    assert proc.returncode == 0, errs
    after = finished(run)
    assert after["search"] == done_before["search"]  # finished stages are not redone
    assert (
        read_json(run / "manifest.json")["stages"]["distill"]["metrics"]["resumed_from_epoch"] == 1
    )
    # Same seed and threads: the resumed training is bitwise the uninterrupted one.
    assert student_sha(run) == student_sha(ref_run)
    assert result_of(run) == result_of(ref_run)
    assert not list(run.rglob(".*.tmp*"))  # what a kill leaves is removed on resume
    assert not outside_writes(before, snapshot(*watched, skip=run))


UNSAFE_IMPORTS = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}
UNSAFE_CALLS = {
    ("", "eval"),
    ("", "exec"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("pickle", "load"),
    ("pickle", "loads"),
}


def _audit(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [f"imports {n}" for n in names if n.split(".")[0] in UNSAFE_IMPORTS]
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        owner = getattr(f.value, "id", "?") if isinstance(f, ast.Attribute) else ""
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        if (owner, name) in UNSAFE_CALLS:
            found.append(f"calls {owner}.{name}".replace("calls .", "calls "))
        if (owner, name) == ("torch", "load") and kw.get("weights_only") is not True:
            found.append("torch.load without weights_only=True")
        found += [f"{k}=True" for k in ("allow_pickle", "trust_remote_code") if kw.get(k) is True]
    return found


def test_safe_loading_audit():
    """No pickle, eval/exec or unsafe YAML in kdc; torch.load only with weights_only=True; HF
    remote code never switched on in code (only by teacher.trust_remote_code)."""
    found = [
        f"{p.relative_to(KDC.parent)}: {f}"
        for p in sorted(KDC.rglob("*.py"))
        for f in _audit(ast.parse(p.read_text()))
    ]
    assert not found, found
    # the audit sees what it looks for
    assert len(_audit(ast.parse("import pickle\ntorch.load(f)\neval('1')\nyaml.load(s)"))) == 4


def test_config_paths_resolve_beside_the_config(tmp_path, monkeypatch):
    from kdc.config import load_config

    (tmp_path / "cfg").mkdir()
    path = write_yaml(
        tmp_path / "cfg" / "model.yaml",
        {
            "name": "x",
            "task": "image-classification",
            "teacher": {"weights": "w.safetensors", "entrypoint": "m:f"},
            "data": {"source": "../data/d.csv"},
        },
    )
    monkeypatch.chdir(tmp_path.parent)
    cfg = load_config(path)
    assert cfg.resolve(cfg.teacher.weights) == (tmp_path / "cfg" / "w.safetensors").resolve()
    assert cfg.resolve(cfg.data.source).resolve() == (tmp_path / "data" / "d.csv").resolve()


def test_build_checks_free_space_first(tmp_path, monkeypatch):
    import kdc.diskspace as D
    from kdc.stages import build

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.onnx").write_bytes(b"x" * (3 << 20))
    monkeypatch.setattr(D, "free_bytes", lambda path: 20 << 20)
    ctx = SimpleNamespace(run=RunDir(tmp_path))
    with pytest.raises(UserError) as e:
        build.run(ctx)
    assert re.search(r"building engines needs 62 MB free in .*build, has 20 MB", str(e.value))
    assert not (tmp_path / "build").exists()


def test_distill_checks_free_space_first(cnn_project, tmp_path, monkeypatch):
    """A disk too full for the checkpoint and the student is a one-line error before training
    (torch.save and safetensors fail on a full disk with errors that are not OSError)."""
    import kdc.diskspace as D

    monkeypatch.setattr(D, "free_bytes", lambda path: 1 << 20)
    with pytest.raises(UserError) as e:
        api.compress(cnn_project, out=tmp_path / "run", quiet=True)
    assert re.search(r"distillation needs \d+ MB free in .*distill, has 1 MB", str(e.value))
    assert not list((tmp_path / "run" / "distill").glob("*"))


def test_require_free_passes_when_there_is_room(tmp_path):
    from kdc.diskspace import free_bytes, require_free

    require_free(tmp_path / "not" / "yet", 1, "a test")  # nearest existing parent is measured
    with pytest.raises(UserError, match=r"needs \d+ MB free in .*, has \d+ MB"):
        require_free(tmp_path, free_bytes(tmp_path) + (1 << 40), "a test")


def test_atomic_dir_replaces_whole_with_shared_permissions(tmp_path):
    """The new directory replaces the old one whole, readable as the umask allows (mkdtemp's
    0700 was kept); a failed block leaves the old one and no temporaries."""
    import stat

    from kdc.rundir import atomic_dir

    target = tmp_path / "student"
    target.mkdir()
    (target / "stale.json").write_text("{}")
    with atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_atomic_dir_interrupted_between_its_two_moves_keeps_the_old_directory(
    tmp_path, monkeypatch
):
    """A Ctrl-C after the old directory is moved aside, before the new one takes its place,
    puts the old one back (it was deleted with the new one)."""
    from kdc import rundir

    target = tmp_path / "student"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(rundir.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), rundir.atomic_dir(target) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    monkeypatch.setattr(rundir.os, "replace", real)
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
