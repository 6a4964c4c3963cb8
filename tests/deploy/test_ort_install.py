"""Exactly one ONNX Runtime package: none is a one-line error naming the extras, two a warning
saying how to keep one."""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

import pytest
from tiny import cnn_config, write_yaml
from typer.testing import CliRunner

from kdc import api
from kdc.cli import app
from kdc.deploy import ort_install

runner = CliRunner()


def _only(monkeypatch, present: set[str]) -> None:
    def version(name: str) -> str:
        if name in present:
            return "1.20.0"
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ort_install.metadata, "version", version)


def test_one_package_is_fine_two_are_a_warning(monkeypatch):
    _only(monkeypatch, {"onnxruntime"})
    assert ort_install.installed() == ["onnxruntime"] and ort_install.conflict_warning() is None
    _only(monkeypatch, {"onnxruntime", "onnxruntime-gpu"})
    warning = ort_install.conflict_warning()
    assert "onnxruntime and onnxruntime-gpu are both installed" in warning
    assert warning.endswith(
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    )


@pytest.mark.parametrize(
    ("module", "code", "said"),
    [
        ("onnxruntime", 2, "error: ONNX Runtime is not installed (fix: pip install 'kdc[cpu]'"),
        ("timm", 3, "internal error: ModuleNotFoundError"),  # not ours to name: a bug report
    ],
)
def test_a_missing_module_met_by_a_command(monkeypatch, tmp_path, module, code, said):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr(api, "compress", missing)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the crash log, without a run dir
    cfg = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None))
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == code and res.output.startswith(said), res.output
    assert len(list(tmp_path.glob("kdc-crash-*.txt"))) == (code == 3)
    assert len(res.output.strip().splitlines()) == 1


def test_a_run_checks_for_onnxruntime_before_it_starts(monkeypatch, tmp_path):
    """The real check, not a faked command: the module cannot be found, compress and --dry-run
    stop in preflight (no run directory)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        ort_install.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    cfg = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None))
    for extra in (["--out", str(tmp_path / "run")], ["--dry-run"]):
        res = runner.invoke(app, ["compress", str(cfg), *extra])
        assert res.exit_code == 2 and "ONNX Runtime is not installed" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_kdc_check_needs_no_onnxruntime():
    """`kdc check` compares JSON: it runs where ONNX Runtime cannot be imported."""
    import subprocess
    import sys

    blocked = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'onnxruntime':\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from kdc.cli import main\n"
        "main()\n"
    )
    sample = str(Path(__file__).parents[1] / "fixtures" / "report_sample.json")
    res = subprocess.run(
        [sys.executable, "-c", blocked, "check", sample, "--baseline", sample],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "PASS" in res.stdout, res.stderr


def test_a_run_warns_when_two_runtimes_are_installed(monkeypatch, tmp_path):
    from kdc import pipeline
    from kdc.rundir import write_json

    def stage(name):
        return pipeline.Stage(
            name,
            lambda ctx: pipeline.StageOutput([write_json(ctx.run / name / "out.json", {})]),
            lambda cfg: ("name",),
        )

    monkeypatch.setattr(pipeline, "_stages", lambda: [stage(n) for n in pipeline.STAGE_NAMES])
    _only(monkeypatch, {"onnxruntime", "onnxruntime-gpu"})
    cfg = write_yaml(tmp_path / "model.yaml", cnn_config(weights=None))
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 0, res.output
    assert "warning: onnxruntime and onnxruntime-gpu are both installed" in res.output
