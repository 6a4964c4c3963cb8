"""A distillation interrupted after any pruning step and resumed (`kdc compress --resume`) ends
with the sizes, and the kept heads and channels, of an uninterrupted one. Resumed, the pruner
worked out its rest from where the schedule said the model was, not from the unpruned sizes
torch-pruning's steps scale: a BERT of 4 heads (hidden 256, FFN 1024) at ratio 0.3 in 4 steps
resumed after step 2 kept 2 heads, not 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_distill import _cfg, cnn, toy_data

from kdc.compress.checkpoint import Checkpoint
from kdc.compress.distill import _pruned_heads, _restore, distill
from kdc.compress.prune import GradualPruning
from kdc.config import PruneConfig
from kdc.models.hf import HFTextAdapter


def _bert() -> tuple[HFTextAdapter, dict[str, np.ndarray]]:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    conf = BertConfig(
        vocab_size=100,
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=1024,
    )
    ids = np.random.default_rng(0).integers(0, 100, (2, 8))
    example = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    return HFTextAdapter(BertForSequenceClassification(conf).eval(), None, 8), example


def _cnn() -> tuple[object, dict[str, np.ndarray]]:
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    return cnn((10, 20), 0), {"pixel_values": x}


CASES = {
    "heads": (_bert, PruneConfig(enabled=True, ratio=0.3, steps=4), None),
    "round_to": (_bert, PruneConfig(enabled=True, ratio=0.3, steps=4), 32),
    "hidden": (_bert, PruneConfig(enabled=True, ratio=0.3, steps=4, hidden_ratio=0.2), 8),
    "cnn": (_cnn, PruneConfig(enabled=True, ratio=0.3, steps=4), None),
}


def _pruned(build, cfg: PruneConfig, round_to: int | None, stop: int | None = None):
    """`build()`'s model pruned all `cfg.steps`, or `stop` of them, then (as a new process reads
    its checkpoint) the rest on a freshly built model re-shaped to the checkpoint's."""
    adapter, example = build()
    pruning = GradualPruning(adapter, example, cfg, ratio=cfg.ratio, round_to=round_to)
    pruning.start(cfg.steps)
    if stop is not None:
        for _ in range(stop):
            pruning.step()
        state = {"model": adapter.module.state_dict(), "pruned_heads": _pruned_heads(adapter)}
        sizes = pruning.sizes
        adapter, example = build()
        _restore(adapter, state)
        pruning = GradualPruning(adapter, example, cfg, ratio=cfg.ratio, round_to=round_to)
        pruning.start(cfg.steps, stop, sizes)
    while not pruning.finished:
        pruning.step()
    return adapter


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stop", [1, 2])
def test_a_pruning_resumed_after_a_step_ends_as_an_uninterrupted_one(case, stop):
    build, cfg, round_to = CASES[case]
    whole = _pruned(build, cfg, round_to)
    resumed = _pruned(build, cfg, round_to, stop)
    want, got = whole.module.state_dict(), resumed.module.state_dict()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    for k, v in want.items():  # the same channels and heads kept (magnitude importance)
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert _pruned_heads(resumed) == _pruned_heads(whole)


def _sizes(case: str, *keys: str) -> tuple:
    arch = _pruned(*CASES[case]).architecture()
    return tuple(arch[k] for k in keys)


def test_the_uninterrupted_sizes_are_torch_pruning_s_schedule():
    """kdc's own step targets prune as torch-pruning's iterative schedule did (no new version)."""
    assert _sizes("heads", "num_attention_heads", "intermediate_size") == (3, 716)
    assert _sizes("round_to", "intermediate_size") == (704,)
    assert _sizes("hidden", "hidden_size", "intermediate_size") == (200, 712)
    assert _sizes("cnn", "conv_channels") == ([7, 14],)


def test_a_distillation_interrupted_mid_pruning_resumes_to_the_same_sizes(tmp_path):
    """The checkpoint after an epoch holds the unpruned sizes the rest of the schedule scales."""
    teacher = cnn((10, 20), 0)
    data = toy_data(teacher)
    example = {k: v[:2] for k, v in data.train.items()}
    cfg = PruneConfig(enabled=True, ratio=0.3, steps=4, epochs=4)

    def run(directory, stop_after: int | None = None):
        student = cnn((10, 20), 0)

        def progress(epoch, _epochs, _rec):
            if epoch == stop_after:
                raise KeyboardInterrupt

        try:
            distill(
                student,
                data,
                _cfg(epochs=5),
                0,
                teacher=teacher,
                pruning=GradualPruning(student, example, cfg, ratio=0.3, round_to=None),
                checkpoint=Checkpoint(directory, "k"),
                progress=progress,
            )
        except KeyboardInterrupt:
            return None
        return student

    whole = run(tmp_path / "whole")
    assert run(tmp_path / "resumed", stop_after=3) is None  # checkpointed after epoch 2
    resumed = run(tmp_path / "resumed")
    assert resumed.architecture()["conv_channels"] == whole.architecture()["conv_channels"]
