"""The TensorRT bundle build writes for a device holds goldens: the eval split's first rows, which
data.limit_eval's cut picks. Build's input hash covers what picks them (the data section, the
data files, the cut's version: `stage_reads.build_profile`), so a resume bundles again when they
change and keeps the bundle when nothing did. (Export's reference outputs, keyed by the first
PARITY_ROWS eval rows, reach build as its upstream too: the resumes below bundle again without
build's own hash of the cut, which the hash test holds.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny import write_yaml

from kdc import api, stage_reads
from kdc.config import load_config, parse_config
from kdc.data import load_dataset
from kdc.models import load_teacher

TARGET = "jetson-orin-nano-8gb"  # no TensorRT here: build writes the device bundle


def _cfg(cnn_project: Path, tmp_path: Path, limit_eval: int) -> Path:
    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(cnn_project.parent / "teacher.safetensors")
    cfg["distill"]["epochs"] = 1
    cfg["data"]["limit_eval"] = limit_eval
    return write_yaml(tmp_path / "model.yaml", cfg)


def _goldens(run: Path) -> np.ndarray:
    with np.load(run / "build" / "bundle" / "goldens.npz") as z:
        return z["pixel_values"]


def _first_eval_rows(path: Path, n: int) -> np.ndarray:
    cfg = load_config(path)
    rows = load_dataset(cfg).eval.take(np.arange(n)).features
    return load_teacher(cfg).encode(rows)["pixel_values"]


def _finished(run: Path) -> dict[str, str]:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    return {k: v["finished"] for k, v in stages.items()}


def _build_hash(target: str, **data: object) -> str:
    from kdc.pipeline import _stages, stage_hash
    from kdc.profiles import load_profile

    cfg = parse_config(
        {
            "name": "t",
            "task": "image-classification",
            "teacher": {"name": "resnet18"},
            "data": {"source": "sklearn:digits", **data},
        }
    )
    build = next(s for s in _stages() if s.name == "build")
    return stage_hash(build, cfg, load_profile(target), "", "")


@pytest.mark.parametrize(
    ("target", "data", "changed"),
    [
        ("jetson-orin-nano-8gb", {"limit_eval": 200}, True),
        ("jetson-orin-nano-8gb", {}, False),  # no cut: the split's first rows
        ("host", {"limit_eval": 200}, False),  # no bundle: build reads no eval row
    ],
)
def test_builds_hash_follows_the_eval_cut_where_it_bundles_goldens(
    monkeypatch, target, data, changed
):
    """Another way of cutting the eval split (EVAL_CUT_VERSION) picks other golden rows: a
    TensorRT run's build hashes it, as export and verify do; other runs hash as before."""
    before = _build_hash(target, **data)
    monkeypatch.setattr(stage_reads, "EVAL_CUT_VERSION", stage_reads.EVAL_CUT_VERSION + 1)
    assert (_build_hash(target, **data) != before) == changed


def test_a_resume_bundles_again_when_the_eval_cut_picks_other_golden_rows(
    cnn_project, tmp_path, monkeypatch
):
    """A run bundled by a kdc whose cut took the eval split's first rows (EVAL_CUT_VERSION 1):
    resumed, build bundles again with the rows the cut keeps now (each class's share); resumed
    again with nothing changed, it keeps the bundle."""
    import kdc.data

    path, run = _cfg(cnn_project, tmp_path, limit_eval=10), tmp_path / "run"
    with monkeypatch.context() as old:
        old.setattr(kdc.data, "stratified_head", lambda labels, n: np.arange(len(labels)) < n)
        old.setattr(stage_reads, "EVAL_CUT_VERSION", 1)
        api.compress(path, TARGET, run, quiet=True)
        stale = _goldens(run)
        assert np.array_equal(stale, _first_eval_rows(path, len(stale)))
    first = _finished(run)
    fresh = _first_eval_rows(path, len(stale))
    assert not np.array_equal(stale, fresh)  # 10 rows, one per class: not the first 10

    api.compress(path, TARGET, run, resume=True, quiet=True)
    second = _finished(run)
    assert second["build"] != first["build"]
    assert np.array_equal(_goldens(run), fresh)

    api.compress(path, TARGET, run, resume=True, quiet=True)
    assert {k: v for k, v in _finished(run).items() if k != "report"} == {
        k: v for k, v in second.items() if k != "report"
    }
    assert np.array_equal(_goldens(run), fresh)


def test_a_resume_with_another_limit_eval_bundles_its_golden_rows(cnn_project, tmp_path):
    """data.limit_eval is build's to read (the data section): another cut bundles again."""
    run = tmp_path / "run"
    api.compress(_cfg(cnn_project, tmp_path, limit_eval=10), TARGET, run, quiet=True)
    first = _finished(run)
    path = _cfg(cnn_project, tmp_path, limit_eval=30)
    api.compress(path, TARGET, run, resume=True, quiet=True)
    assert _finished(run)["build"] != first["build"]
    goldens = _goldens(run)
    assert np.array_equal(goldens, _first_eval_rows(path, len(goldens)))
