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
