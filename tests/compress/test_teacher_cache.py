"""The teacher cache: rows that reach the teacher unchanged are looked up in later epochs, and the
outputs (and the losses on them) equal a full teacher run on the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_distill import _cfg, cnn, toy_data
from tiny import sentences, tiny_bert

from kdc.compress.distill import DistillData, _Trainer
from kdc.compress.teacher_cache import TeacherCache
from kdc.models.hf import HFTextAdapter


def _text_trainer(tmp_path, cache_mb: int = 1024) -> _Trainer:
    model, tok = tiny_bert(tmp_path)
    teacher = HFTextAdapter(model.eval(), tok, 24)
    student = HFTextAdapter(tiny_bert(tmp_path, layers=1)[0], tok, 24)
    rows = sentences(40, 0)
    x = teacher.encode([r[0] for r in rows])
    y = np.array([1 if r[1] == "positive" else 0 for r in rows])
    data = DistillData(x, y, x, y, None)
    losses = [{"name": "logits"}, {"name": "hidden"}, {"name": "attention"}]
    cfg = _cfg(
        batch_size=8, augment="auto", augment_prob=0.5, losses=losses, teacher_cache_mb=cache_mb
    )
    tr = _Trainer(student, data, cfg, 0, teacher, None)
    for taps in (tr.s_taps, tr.t_taps):
        taps.attach()
    tr.prepare()
    tr.objective.eval()
    return tr


def _counting(tr: _Trainer) -> list[int]:
    """Wrap the trainer's teacher run to record the rows of each call."""
    seen: list[int] = []
    run = tr.teacher_run

    def counted(batch):
        seen.append(len(batch["input_ids"]))
        return run(batch)

    tr.teacher_run = counted
    return seen


@pytest.mark.parametrize("cache_mb", [1024, 0])
def test_cached_teacher_outputs_give_the_losses_of_a_full_run(tmp_path, cache_mb):
    tr = _text_trainer(tmp_path, cache_mb)
    seen = _counting(tr)
    for epoch in range(3):
        order = tr.shard(epoch)
        for step, start in enumerate(range(0, len(order), 8)):
            sel = order[start : start + 8]
            batch, t_logits, labels, feats = tr.targets(sel, epoch, step)
            with torch.no_grad():
                ref_logits = tr.teacher.module(**batch)
                ref_feats = tr.t_taps.take()
                got = tr.objective(batch, t_logits, labels, feats)
                want = tr.objective(batch, ref_logits, labels, ref_feats)
            torch.testing.assert_close(t_logits, ref_logits, atol=1e-5, rtol=1e-5)
            assert set(feats) == set(ref_feats)
            mask = batch["attention_mask"].bool()
            for name, v in feats.items():
                assert v.shape == ref_feats[name].shape, name
                keep = mask[:, None, :, None] if v.dim() == 4 else mask[..., None]
                torch.testing.assert_close(
                    v * keep, ref_feats[name] * keep, atol=1e-5, rtol=1e-5, msg=name
                )
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    later = sum(seen[5:])  # epochs 1 and 2 (5 batches of 8 rows an epoch)
    stats = tr.cache.stats()
    if cache_mb == 0:
        assert not tr.cache.kept and sum(seen) == 120  # nothing kept: every row runs every time
        assert stats["rows_looked_up"] == 0
    else:
        assert len(tr.cache.kept) > 20 and later < 60  # unchanged rows are looked up
        assert stats["rows_run"] + stats["rows_looked_up"] == 120 + 8  # + prepare's probe batch


def test_image_rows_and_their_feature_maps_are_cached_whole():
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    data = toy_data(teacher)
    losses = [{"name": "logits"}, {"name": "hidden"}]
    cfg = _cfg(augment="auto", augment_prob=0.5, losses=losses)
    tr = _Trainer(student, data, cfg, 0, teacher, None)
    tr.t_taps.attach()
    sel = np.arange(16)
    tr.targets(sel, 0, 0)
    assert tr.cache.kept  # unchanged rows kept
    batch, t_logits, _, feats = tr.targets(sel, 1, 0)
    assert tr.cache.looked_up
    with torch.no_grad():
        torch.testing.assert_close(t_logits, teacher.module(**batch), atol=1e-5, rtol=1e-5)
    ref = tr.t_taps.take()
    assert set(feats) == set(ref) and feats["hidden0"].dim() == 4
    for name, v in feats.items():
        torch.testing.assert_close(v, ref[name], atol=1e-5, rtol=1e-5, msg=name)


def test_a_text_feature_that_cannot_be_cut_turns_the_cache_off():
    """A `pooled` tap that is B×L×F (a feed-forward input, in models without a pooler) is read
    unmasked by the relation/embedding losses: zero padding would change them."""
    cache = TeacherCache({"hidden0": 1}, limit=1 << 20)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = {"input_ids": mask * 5, "attention_mask": mask}

    def run(b):
        n, w = b["attention_mask"].shape
        return torch.ones(n, 2), {"hidden0": torch.ones(n, w, 3), "pooled": torch.ones(n, w, 7)}

    for _ in range(2):
        logits, feats = cache.outputs(batch, np.arange(2), np.zeros(2, bool), run)
        assert feats["pooled"].shape == (2, 4, 7)
    assert not cache.kept and cache.limit == 0 and cache.stats()["rows_looked_up"] == 0


def test_cache_stops_storing_at_its_limit():
    cache = TeacherCache({}, limit=3 * 2 * 4)  # three rows of two float32 logits

    def run(batch):
        return batch["x"].float() * 2, {}

    x = torch.arange(12).reshape(6, 2)
    cache.outputs({"x": x}, np.arange(6), np.zeros(6, bool), run)
    assert sorted(cache.kept) == [0, 1, 2] and cache.size == 24  # never past the limit
    logits, _ = cache.outputs({"x": x}, np.arange(6), np.zeros(6, bool), run)
    torch.testing.assert_close(logits, x.float() * 2)
