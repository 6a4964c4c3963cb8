"""`verify.max_duration_s`: where a timing stops however few runs it took (60 s before it was a
setting), so a model too slow for 100 runs in a minute can have its p99 judged; hashed only
where set, so runs of the default resume as before."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np

from kdc.config import VerifyConfig, load_config
from kdc.stages import verify


def test_verify_times_up_to_max_duration(monkeypatch):
    seen: dict = {}

    def rounds(models, inputs, **options):
        seen.update(options)
        return {n: {"p50_ms": 1.0} for n in models}

    monkeypatch.setattr(verify, "measure_onnx_rounds", rounds)
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(verify=VerifyConfig(max_duration_s=300)),
        progress=lambda *a: contextlib.nullcontext(lambda n: None),
        latency_inputs=lambda: {"x": np.zeros((1, 4), np.float32)},
        latency_padding=lambda: 0.0,
    )
    verify.measure_all(ctx, {"fp32": ("m.onnx", "fp32")})
    assert seen["max_duration_s"] == 300 and seen["min_duration_s"] == 1.0


def test_max_duration_hashed_only_where_set(cnn_project):
    from kdc.pipeline import _stages, stage_hash
    from kdc.profiles import load_profile
    from kdc.stage_reads import config_reads

    cfg, profile = load_config(cnn_project), load_profile("host")
    assert "max_duration_s" not in config_reads(cfg, ("verify",))["verify"]
    longer = cfg.model_copy(
        update={"verify": cfg.verify.model_copy(update={"max_duration_s": 300})}
    )
    assert config_reads(longer, ("verify",))["verify"]["max_duration_s"] == 300
    changed = {
        s.name
        for s in _stages()
        if stage_hash(s, cfg, profile, "", "") != stage_hash(s, longer, profile, "", "")
    }
    assert changed == {"verify", "report"}
