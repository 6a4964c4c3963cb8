"""Distillation-time augmentation: text splicing keeps sequences well formed, image shifts keep
shapes, names are checked against the inputs, and a run with augmentation trains the student
on teacher-labelled perturbed rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_distill import _cfg, _train_teacher, cnn, toy_data
from tiny import sentences, tiny_bert

from kdc.compress.augment import TokenSwap, resolve_augment, shift_image, splice_text
from kdc.compress.distill import DistillData, _Trainer, distill
from kdc.errors import UserError
from kdc.models.hf import HFTextAdapter

CLS, SEP = 101, 102


def text_batch() -> dict[str, torch.Tensor]:
    rows = [[CLS, 5, 6, 7, 8, SEP], [CLS, 9, 10, SEP], [CLS, *range(11, 17), SEP], [CLS, 3, SEP]]
    width = 8
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": 0 * ids}


@pytest.mark.parametrize("seed", range(20))
def test_splice_keeps_special_tokens_masks_and_width(seed):
    batch = text_batch()
    out, changed = splice_text(batch, np.random.default_rng(seed), 1.0)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape[1] <= 8 and set(out) == set(batch)
    assert not changed[3]  # [CLS] x [SEP]: nothing to cut, so not marked as perturbed
    for i, flag in enumerate(changed):  # flagged exactly when the row differs
        width = min(ids.shape[1], batch["input_ids"].shape[1])
        assert flag == (not torch.equal(ids[i, :width], batch["input_ids"][i, :width]))
    for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # contiguous, left-aligned
        assert row[0] == CLS and row[n - 1] == SEP and SEP not in row[1 : n - 1]
        assert all(t == 0 for t in row[n:])
    assert (out["token_type_ids"] == 0).all()


def test_splice_mixes_rows_and_leaves_unchosen_rows_alone():
    batch = text_batch()
    outs = [splice_text(batch, np.random.default_rng(s), 1.0)[0]["input_ids"] for s in range(20)]
    first = {t for o in outs for t in o[0].tolist()}
    assert first & set(range(9, 17))  # row 0 took tokens from another row at least once
    same, changed = splice_text(batch, np.random.default_rng(0), 0.0)
    assert not changed.any() and torch.equal(same["input_ids"], batch["input_ids"][:, :8])


def pair_batch() -> dict[str, torch.Tensor]:
    """Text pairs [CLS] a [SEP] b [SEP], token types 0 then 1."""
    pairs = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14]), ([15], [16, 17]), ([18, 19], [20])]
    width = 9
    rows = [[CLS, *a, SEP, *b, SEP] for a, b in pairs]
    types = [[0] * (len(a) + 2) + [1] * (len(b) + 1) for a, b in pairs]
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    tt = torch.tensor([t + [0] * (width - len(t)) for t in types])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": tt}


@pytest.mark.parametrize("seed", range(20))
def test_splice_keeps_text_pairs_well_formed(seed):
    """A pair row stays [CLS] first [SEP] second [SEP] with types 0…0 1…1: spliced as whole
    texts (one row's first, another's second), its separator never deleted."""
    batch = pair_batch()
    out, _ = splice_text(batch, np.random.default_rng(seed), 1.0)
    firsts = {tuple(range(5, 8)), (10, 11), (15,), (18, 19)}
    for row, m, t in zip(*(out[k].tolist() for k in batch), strict=True):
        n = sum(m)
        assert row[0] == CLS and row[n - 1] == SEP and row[1 : n - 1].count(SEP) == 1
        mid = row.index(SEP, 1)
        assert t[:n] == [0] * (mid + 1) + [1] * (n - mid - 1)
        first = tuple(row[1:mid])
        assert set(first) <= set(range(5, 8)) | {10, 11, 15, 18, 19} and first
        if len(first) == len(next(f for f in firsts if set(first) <= set(f))):
            assert first in firsts  # whole texts, or a deletion within one


def test_shift_moves_images_within_bounds():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    out, changed = shift_image({"pixel_values": x}, np.random.default_rng(1), 1.0)
    y = out["pixel_values"]
    assert y.shape == x.shape and y.min() >= x.min() and y.max() <= x.max()
    assert changed.any() and all(f == (not torch.equal(x[i], y[i])) for i, f in enumerate(changed))


def test_augment_names_are_checked_against_the_inputs():
    text = {"input_ids": np.zeros((2, 4)), "attention_mask": np.ones((2, 4))}
    image = {"pixel_values": np.zeros((2, 1, 8, 8), np.float32)}
    assert resolve_augment("none", text) is None
    assert resolve_augment("auto", text) is splice_text
    assert resolve_augment("auto", image) is shift_image
    with pytest.raises(UserError, match=r"distill\.augment.*'shift'.*text.*auto or splice or swap"):
        resolve_augment("shift", text)
    with pytest.raises(UserError, match="use none"):
        resolve_augment("auto", {"features": np.zeros((2, 3))})


def swap_table() -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """The text batch's inputs and an embedding table where token t's nearest tokens are t ± 1."""
    inputs = {k: v.numpy() for k, v in text_batch().items()}
    angle = torch.arange(32, dtype=torch.float32) * 0.05
    return inputs, torch.stack([angle.cos(), angle.sin()], dim=1)


def test_swap_replaces_tokens_by_embedding_neighbours_the_training_rows_use():
    inputs, table = swap_table()
    swap = TokenSwap(inputs, table)
    assert swap.vocab.tolist() == [3, *range(5, 17)]  # inner tokens only: no [CLS], [SEP], pad
    assert swap.near[swap.vocab.tolist().index(8)][:2].tolist() in ([7, 9], [9, 7])
    batch = text_batch()
    seen = set()
    for seed in range(30):
        out, changed = swap(batch, np.random.default_rng(seed), 1.0)
        ids = out["input_ids"]
        assert torch.equal(ids[:, 0], batch["input_ids"][:, 0]) and set(out) == set(batch)
        assert torch.equal(out["attention_mask"], batch["attention_mask"])
        for i, flag in enumerate(changed):
            assert flag == (not torch.equal(ids[i], batch["input_ids"][i]))
            n = int(batch["attention_mask"][i].sum())
            assert ids[i, n - 1] == SEP and (ids[i, n:] == 0).all()
            seen |= set(ids[i, 1 : n - 1].tolist()) - set(batch["input_ids"][i].tolist())
    assert seen and seen <= set(swap.vocab.tolist())
    short = {k: v[3:] for k, v in inputs.items()}  # [CLS] x [SEP]: one inner token, no neighbour
    assert not TokenSwap(short, table)(batch, np.random.default_rng(0), 1.0)[1].any()


def test_mix_splices_or_swaps_and_needs_an_embedding_table():
    inputs, table = swap_table()
    positions = torch.nn.Embedding(8, 2)  # first, as in XLM: the token table is found by name
    model = torch.nn.Sequential(positions, torch.nn.Embedding.from_pretrained(table))
    model.get_input_embeddings = lambda: model[1]
    teacher = SimpleNamespace(module=torch.nn.Sequential(model), model=model, tokenizer=None)
    mix = resolve_augment("mix", inputs, teacher)
    batch = text_batch()
    out, changed = mix(batch, np.random.default_rng(0), 0.0)
    assert not changed.any() and torch.equal(out["input_ids"], batch["input_ids"][:, :8])
    hits = [mix(batch, np.random.default_rng(s), 1.0)[1].sum() for s in range(10)]
    assert sum(hits) >= 15  # of 30 rows that can change (a swap may leave a short row as it was)
    with pytest.raises(UserError, match=r"distill\.augment.*embedding table.*use splice"):
        resolve_augment("swap", inputs, SimpleNamespace(module=torch.nn.Linear(2, 2)))


def test_swap_leaves_special_tokens_alone_and_checks_the_table():
    inputs, table = swap_table()
    inputs["input_ids"][0, 2] = 1  # an [UNK] (special id 1) inside a row
    tokenizer = SimpleNamespace(all_special_ids=[0, 1, CLS, SEP])
    swap = resolve_augment(
        "swap",
        inputs,
        SimpleNamespace(
            module=None,
            tokenizer=tokenizer,
            model=SimpleNamespace(
                get_input_embeddings=lambda: torch.nn.Embedding.from_pretrained(table)
            ),
        ),
    )
    assert 1 not in swap.vocab and 1 not in swap.near
    batch = {k: v.int() if k == "input_ids" else v for k, v in text_batch().items()}  # int32 ids
    out, changed = swap(batch, np.random.default_rng(0), 1.0)
    assert out["input_ids"].dtype == torch.int32 and changed.any()
    with pytest.raises(UserError, match=r"token id 16 is beyond the teacher's 12-row"):
        TokenSwap(inputs, table[:12])


def test_augmented_rows_take_the_teachers_logits_and_class():
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    data = toy_data(teacher)
    tr = _Trainer(student, data, _cfg(augment="auto", augment_prob=1.0), 0, teacher, None)
    sel = np.arange(8)
    batch, t_logits, labels, _ = tr.targets(sel, 0, 0)
    before = torch.from_numpy(data.train["pixel_values"][sel])
    moved = torch.tensor(
        [not torch.equal(a, b) for a, b in zip(batch["pixel_values"], before, strict=True)]
    )
    assert moved.any()
    with torch.no_grad():
        assert torch.allclose(t_logits, teacher.module(**batch))
    want = torch.where(moved, t_logits.argmax(1), torch.from_numpy(data.train_labels[sel]))
    assert torch.equal(labels, want)  # only perturbed rows take the teacher's class


def test_distill_with_augmentation_learns_images_and_runs_on_text(tmp_path):
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    _train_teacher(teacher)
    data = toy_data(teacher)
    res = distill(student, data, _cfg(epochs=6, lr=0.02, augment="auto"), 0, teacher=teacher)
    assert res.kept_metric > 0.5
    bert = HFTextAdapter(tiny_bert(tmp_path)[0], tok := tiny_bert(tmp_path)[1], 24)
    small = HFTextAdapter(tiny_bert(tmp_path, layers=1)[0], tok, 24)
    rows = sentences(48, 0)
    x = bert.encode([r[0] for r in rows])
    y = np.array([1 if r[1] == "positive" else 0 for r in rows])
    text = DistillData(
        {k: v[:40] for k, v in x.items()},
        y[:40],
        {k: v[40:] for k, v in x.items()},
        y[40:],
        bert.forward_numpy({k: v[:40] for k, v in x.items()}),
    )
    for augment in ("auto", "mix"):
        losses = [{"name": "logits"}, {"name": "hidden"}]
        res = distill(
            small, text, _cfg(epochs=1, lr=1e-3, augment=augment, losses=losses), 0, teacher=bert
        )
        assert np.isfinite(res.history[0]["loss"])
