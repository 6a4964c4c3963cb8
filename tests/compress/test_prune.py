"""Structured pruning: pruned models run, export to ONNX and reload with fewer parameters; the
gradual schedule reaches the target; the latency target picks a ratio that meets it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from test_distill import _cfg, cnn, toy_data
from tiny import tiny_bert

from kdc.compress.distill import distill
from kdc.compress.prune import (
    GradualPruning,
    head_target,
    prune_once,
    ratio_for_latency,
    width_target,
)
from kdc.config import PruneConfig
from kdc.export.onnx_export import export_onnx
from kdc.models import load_student
from kdc.models.hf import HFTextAdapter


def _bert(tmp_path, heads: int = 2) -> HFTextAdapter:
    from transformers import BertConfig, BertForSequenceClassification

    model, tok = tiny_bert(tmp_path, layers=2)
    if heads != 2:
        cfg = BertConfig(**{**model.config.to_dict(), "num_attention_heads": heads})
        torch.manual_seed(0)
        model = BertForSequenceClassification(cfg)
    return HFTextAdapter(model.eval(), tok, 16)


def _attention_heads(adapter: HFTextAdapter) -> list[int]:
    return [
        m.num_attention_heads
        for m in adapter.model.modules()
        if hasattr(m, "num_attention_heads") and hasattr(m, "query")
    ]


def _roundtrip(adapter, example, tmp_path):
    """Export to ONNX (outputs match PyTorch) and reload from the saved directory."""
    onnx_path = export_onnx(adapter, example, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = adapter.forward_numpy(example)
    np.testing.assert_allclose(sess.run(None, example)[0], ref, atol=1e-4)
    adapter.save(tmp_path / "student")
    again = load_student(tmp_path / "student", 16)
    np.testing.assert_allclose(again.forward_numpy(example), ref, atol=1e-5)
    return again


def test_bert_loses_whole_heads_and_ffn_neurons_and_round_trips(tmp_path):
    bert = _bert(tmp_path)
    example = bert.encode(["good movie", "the plot was awful and bad", "i love this film"])
    pruned = prune_once(bert, example, PruneConfig(enabled=True, ratio=0.5), ratio=0.5, round_to=8)
    arch = pruned.architecture()
    assert _attention_heads(pruned) == [1, 1] and arch["num_attention_heads"] == 1
    assert arch["intermediate_size"] == 32 and arch["hidden_size"] == 32
    assert pruned.params() < 0.75 * bert.params()
    again = _roundtrip(pruned, example, tmp_path)
    assert _attention_heads(again) == [1, 1] and again.params() == pruned.params()


def test_bert_hidden_channels_prune_and_round_trip(tmp_path):
    bert = _bert(tmp_path)
    example = bert.encode(["good movie", "bad plot and actor"])
    cfg = PruneConfig(enabled=True, ratio=0.5, head_ratio=0.0, hidden_ratio=0.25)
    pruned = prune_once(bert, example, cfg, ratio=0.5, round_to=8)
    arch = pruned.architecture()
    assert (arch["hidden_size"], arch["num_attention_heads"], arch["intermediate_size"]) == (
        24,
        2,
        32,
    )
    _roundtrip(pruned, example, tmp_path)


def test_cnn_loses_channels_and_round_trips(tmp_path):
    net = cnn((8, 16), 0)
    example = {
        "pixel_values": np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    }
    pruned = prune_once(net, example, PruneConfig(enabled=True), ratio=0.5, round_to=4)
    assert pruned.architecture()["conv_channels"] == [4, 8]
    assert pruned.params() < 0.5 * net.params()
    _roundtrip(pruned, example, tmp_path)


def test_step_targets_follow_torch_pruning_s_iterative_schedule():
    """FFN 1024, ratio 0.3 in 4 steps: int(1024·(1 − 0.075k)), rounded down to 32 (and never
    wider than the step before); heads go evenly to round(heads·(1−ratio))."""
    widths, now = [], 1024
    for k in range(1, 5):
        now = width_target(1024, 0.3, k, 4, 32, now)
        widths.append(now)
    assert widths == [928, 864, 768, 704]
    assert [width_target(1024, 0.3, k, 4, None, 1024) for k in (1, 4)] == [947, 716]
    assert [head_target(4, 0.3, k, 4) for k in range(5)] == [4, 4, 3, 3, 3]
    assert [head_target(2, 0.5, k, 4) for k in range(5)] == [2, 2, 2, 1, 1]


def test_gradual_schedule_reaches_the_target(tmp_path):
    bert = _bert(tmp_path, heads=4)
    example = bert.encode(["good movie", "bad plot"])
    sched = GradualPruning(
        bert, example, PruneConfig(enabled=True, ratio=0.5, steps=2), ratio=0.5, round_to=8
    )
    sched.start(span=10)
    assert [s for s in range(12) if sched.due(s) and not sched.step()] == [0, 5]
    assert sched.finished and _attention_heads(bert) == [2, 2]
    assert bert.architecture()["intermediate_size"] == 32


def test_pruning_during_distillation_then_resume_keeps_shapes(tmp_path):
    from kdc.compress.checkpoint import Checkpoint

    teacher, student = cnn((8, 16), 0), cnn((8, 16), 0)
    data = toy_data(teacher)
    example = {k: v[:2] for k, v in data.train.items()}
    cfg = PruneConfig(enabled=True, ratio=0.5, steps=3, epochs=2)
    sched = GradualPruning(student, example, cfg, ratio=0.5, round_to=None)
    res = distill(
        student,
        data,
        _cfg(epochs=3),
        0,
        teacher=teacher,
        pruning=sched,
        checkpoint=Checkpoint(tmp_path, "k"),
    )
    assert sched.finished and student.architecture()["conv_channels"] == [4, 8]
    assert res.history[0]["params"] > res.history[-1]["params"] and res.kept_epoch >= 1
    # a restart after the last epoch rebuilds the pruned shapes from the checkpoint
    fresh = cnn((8, 16), 0)
    again = distill(
        fresh,
        data,
        _cfg(epochs=3),
        0,
        teacher=teacher,
        pruning=GradualPruning(fresh, example, cfg, ratio=0.5, round_to=None),
        checkpoint=Checkpoint(tmp_path, "k"),
    )
    assert again.resumed_from_epoch == 3 and fresh.params() == student.params()


def test_ratio_for_latency_meets_the_target():
    net = cnn((16, 32), 0)
    example = {"pixel_values": np.zeros((2, 1, 8, 8), np.float32)}
    cfg = PruneConfig(enabled=True, ratio=0.8, target_latency_ms=1.0)

    def latency(adapter) -> float:  # a stand-in for the roofline prediction
        return adapter.params() / 2000

    full = latency(net)
    ratio, ms = ratio_for_latency(
        net, example, cfg, target_ms=full / 2, latency_ms=latency, round_to=None
    )
    assert 0 < ratio <= 0.8 and ms <= full / 2
    assert latency(prune_once(net, example, cfg, ratio=ratio, round_to=None)) == ms
    assert ratio_for_latency(
        net, example, cfg, target_ms=full * 2, latency_ms=latency, round_to=None
    ) == (0.0, full)
