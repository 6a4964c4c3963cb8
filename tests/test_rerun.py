"""Running again into a run directory another model used: each whole-directory output is replaced
as a whole, so nothing of the earlier model reaches the new one's student or device bundle, while
a resume's state and the user's own files stay."""

from __future__ import annotations

import json

from tiny import config_of, write_yaml

from kdc import api

STALE = ("config.json", "tokenizer.json", "vocab.txt", "shapes.json")  # an earlier BERT's


def test_rerun_replaces_student_and_engine_directories(cnn_project, tmp_path):
    cfg = config_of(cnn_project)
    cfg["distill"]["epochs"] = 1
    path = write_yaml(tmp_path / "model.yaml", cfg)
    run = tmp_path / "run"
    api.compress(path, "jetson", run, quiet=True)
    student = run / "distill" / "student"
    for name in STALE:
        (student / name).write_text("{}")
    (run / "build" / "onnxruntime" / "old_model.onnx").write_bytes(b"stale")
    (run / "build" / "tensorrt" / "cache").mkdir(parents=True)  # as a machine with TensorRT
    (run / "build" / "tensorrt" / "model.plan").write_bytes(b"an engine of the earlier graph")
    (run / "build" / "tensorrt" / "cache" / "abc.plan").write_bytes(b"cached by key")
    (run / "build" / "bundle" / "preprocessing").mkdir(exist_ok=True)
    (run / "build" / "bundle" / "preprocessing" / "vocab.txt").write_text("stale")
    (run / "notes.txt").write_text("mine")
    logits = sorted((run / "distill").glob("teacher_logits*.npy"))
    assert logits

    api.compress(path, "jetson", run, quiet=True)  # not --resume: every stage runs again

    assert sorted(p.name for p in student.iterdir()) == ["kdc_model.json", "model.safetensors"]
    assert not (run / "build" / "onnxruntime" / "old_model.onnx").exists()
    assert not (run / "build" / "tensorrt" / "model.plan").exists()  # built here: none now
    assert (run / "build" / "tensorrt" / "cache" / "abc.plan").is_file()  # keyed by graph hash
    bundle = run / "build" / "bundle"
    assert (bundle / "bundle.json").is_file()  # a CNN's only preprocessing: its input contract
    assert sorted(p.name for p in (bundle / "preprocessing").iterdir()) == ["input.json"]
    assert json.loads((bundle / "bundle.json").read_text())["preprocessing"] == ["input.json"]
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted((run / "distill").glob("teacher_logits*.npy")) == logits
    assert not list(run.rglob(".*.tmp"))  # no temporary directory left beside them
    manifest = json.loads((run / "manifest.json").read_text())
    recorded = {rel for s in manifest["stages"].values() for rel in s.get("outputs", {})}
    assert all((run / rel).is_file() for rel in recorded)
