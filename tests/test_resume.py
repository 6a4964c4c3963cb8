"""Resume skips finished stages whose inputs did not change, and redoes changed ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from tiny import write_yaml

from kdc import api


def _cfg(cnn_project, tmp_path, weights: Path | None = None, **distill):
    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(weights or cnn_project.parent / "teacher.safetensors")
    cfg["distill"].update({"epochs": 1, **distill})
    return write_yaml(tmp_path / "model.yaml", cfg)


def test_resume_skips_done_stages(cnn_project, tmp_path):
    path = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    manifest = json.loads((run / "manifest.json").read_text())
    first = manifest["stages"]

    # the manifest records the profile and versions report.json has; report.json shows every
    # stage, its own included, as done (it is written last, before the manifest says so)
    report = json.loads((run / "report.json").read_text())
    assert manifest["profile"] == {"name": "host", "sha256": report["target"]["profile_sha256"]}
    assert manifest["libraries"] == report["run"]["libraries"]
    assert manifest["kdc_version"] == report["kdc_version"]
    assert {k: v["status"] for k, v in report["run"]["stages"].items()} == dict.fromkeys(
        first, "done"
    )
    # a finished stage keeps its start time; the run started when its first stage did
    assert all(v["started"] <= v["finished"] for v in first.values())
    assert report["run"]["started"] == first["search"]["started"]

    # a manifest written before those keys existed still resumes, and gains them
    for key in ("profile", "libraries"):
        del manifest[key]
    (run / "manifest.json").write_text(json.dumps(manifest))
    api.compress(path, "host", run, resume=True, quiet=True)
    manifest = json.loads((run / "manifest.json").read_text())
    second = manifest["stages"]
    assert all(first[s]["finished"] == second[s]["finished"] for s in first)
    assert manifest["profile"]["sha256"] == report["target"]["profile_sha256"]
    assert manifest["libraries"] == report["run"]["libraries"]

    # a distill change re-runs distill and everything after it, not search
    path = _cfg(cnn_project, tmp_path, lr=0.001)
    api.compress(path, "host", run, resume=True, quiet=True)
    third = json.loads((run / "manifest.json").read_text())["stages"]
    assert third["search"]["finished"] == first["search"]["finished"]
    assert third["distill"]["input_hash"] != first["distill"]["input_hash"]

    # the teacher cache's size changes speed and memory, not the student: nothing is redone
    path = _cfg(cnn_project, tmp_path, lr=0.001, teacher_cache_mb=0)
    api.compress(path, "host", run, resume=True, quiet=True)
    fourth = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(fourth[s]["finished"] == third[s]["finished"] for s in third)


def test_corrupt_artifact_is_redone(cnn_project, tmp_path):
    path = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    before = json.loads((run / "manifest.json").read_text())["stages"]
    (run / "export" / "model.onnx").write_bytes(b"garbage")
    api.compress(path, "host", run, resume=True, quiet=True)
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert after["distill"]["finished"] == before["distill"]["finished"]
    assert after["export"]["finished"] != before["export"]["finished"]


def test_retrained_teacher_gets_fresh_cached_logits(cnn_project, tmp_path):
    """The teacher-logits cache is keyed by the teacher's files: a retrained teacher (same
    shapes, new weights) re-runs distill with new logits, never the cached ones."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "teacher.safetensors"  # a copy: the session's teacher stays as trained
    shutil.copyfile(cnn_project.parent / "teacher.safetensors", weights)
    path = _cfg(cnn_project, tmp_path, weights)
    run = tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    first = sorted((run / "distill").glob("teacher_logits*.npy"))
    state = load_file(weights)
    save_file(
        {
            k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
            for k, v in state.items()
        },
        weights,
    )
    api.compress(path, "host", run, resume=True, quiet=True)
    second = sorted((run / "distill").glob("teacher_logits*.npy"))
    assert len(first) == len(second) == 1 and first != second
