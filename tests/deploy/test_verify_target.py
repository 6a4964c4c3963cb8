"""`kdc verify RUN --target T` for a target that runs no TensorRT, on a run compressed for a
TensorRT target: its TensorRT engine is `unavailable` there, with the reason and no figures."""

from __future__ import annotations

from types import SimpleNamespace

from kdc.profiles import load_profile
from kdc.rundir import RunDir
from kdc.stages.verify import _tensorrt_elsewhere

ENGINES = [
    {"engine": "onnxruntime", "precision": "int8", "status": "built", "path": "build/m.onnx"},
    {
        "engine": "tensorrt",
        "precision": "int8",
        "status": "bundle",
        "path": "build/bundle",
        "source": "build/m.onnx",
    },
]


def test_a_jetson_runs_tensorrt_bundle_is_unavailable_on_the_host(tmp_path):
    run = RunDir(tmp_path)
    run.update_manifest(target="jetson-orin-nano-8gb")
    ctx = SimpleNamespace(profile=load_profile("host"), run=run)
    rec = _tensorrt_elsewhere(ctx, ENGINES[1], ENGINES)
    assert (rec["engine"], rec["precision"], rec["status"]) == ("tensorrt", "int8", "unavailable")
    assert not {"latency", "accuracy", "source", "path", "memory"} & set(rec)
    assert "target host runs onnxruntime only" in rec["reason"]
    assert "TensorRT bundle (build/bundle) is for jetson-orin-nano-8gb" in rec["reason"]
    assert f"`kdc verify {tmp_path} --target jetson-orin-nano-8gb`" in rec["reason"]
    unbuilt = {**ENGINES[1], "status": "unavailable", "path": None}  # no TensorRT where it ran
    reason = _tensorrt_elsewhere(ctx, unbuilt, ENGINES)["reason"]
    assert "TensorRT engine (not built) is for" in reason and "None" not in reason


def test_a_teacher_no_better_than_the_majority_class_is_noted():
    """A CNN teacher fed images at the wrong size scored chance (0.094) and the run PASSED on
    its relative drop: verify says the teacher is no better than the most common class."""
    import numpy as np

    from kdc.stages.verify import _no_better_than_majority

    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    note = _no_better_than_majority(0.69, labels)
    assert note and "scores 0.6900" in note and "most common class (0.7000)" in note
    assert "data.image_size" in note
    assert "data.text_column" in _no_better_than_majority(0.7, labels, "text")
    assert _no_better_than_majority(0.705, labels) is None
    assert _no_better_than_majority(None, labels) is None
    # a perfect teacher on data nearly all of one class is not flagged
    assert _no_better_than_majority(1.0, np.array([0] * 995 + [1] * 5)) is None


def test_verifys_teacher_warnings_reach_the_reports_warnings(monkeypatch):
    import kdc.preflight
    from kdc.stages.report import run_warnings

    monkeypatch.setattr(kdc.preflight, "config_warnings", lambda cfg: [])
    monkeypatch.setattr(kdc.preflight, "target_warnings", lambda cfg, profile: [])
    ctx = SimpleNamespace(cfg=None, profile=None)
    note = "the teacher scores 0.1"
    assert run_warnings(ctx, {"notes": ["a"]}, [note]) == ["a", note]


def test_a_nan_metric_is_recorded_as_no_figure():
    """An embedding engine whose outputs overflow gave mean_cosine NaN, written as NaN into
    report.json, which `kdc check` then refused as not a kdc report."""
    from kdc.stages.verify import finite_metrics

    res = finite_metrics({"mean_cosine": float("nan"), "spearman": 0.5})
    assert res["mean_cosine"] is None and res["spearman"] == 0.5 and "NaN" in res["error"]
    assert finite_metrics({"accuracy": 0.9}) == {"accuracy": 0.9}


def test_rows_cut_at_max_length_are_noted():
    import numpy as np

    from kdc.stages.verify import _truncation_note

    def ctx(full: int, rows: int = 40):
        mask = np.ones((rows, 16), np.int64)
        mask[full:, 10:] = 0  # the rest end before max_length
        cfg = SimpleNamespace(data=SimpleNamespace(max_length=16))
        return SimpleNamespace(cfg=cfg, encode=lambda split: {"attention_mask": mask})

    note = _truncation_note(ctx(10))
    assert note.startswith("10 of the 40 eval rows (25%) reach data.max_length (16 tokens), ")
    assert "every accuracy here is at 16 tokens" in note
    assert _truncation_note(ctx(1)) is None  # under 5 %
    images = SimpleNamespace(encode=lambda split: {"pixel_values": np.zeros((2, 3, 8, 8))})
    assert _truncation_note(images) is None
