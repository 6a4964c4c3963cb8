"""map_by_length: text batches by length, outputs in input order."""

from __future__ import annotations

import numpy as np
import pytest

from kdc.data.batching import map_by_length


def _widths_and_rows(inputs: dict, cut: bool = True) -> tuple[list, np.ndarray]:
    widths = []

    def fn(batch: dict) -> np.ndarray:
        widths.append(batch["attention_mask"].shape[1] if "attention_mask" in batch else None)
        return batch["row"].astype(np.float32)[:, None]

    return widths, map_by_length(fn, inputs, batch_size=2, cut=cut)


def test_text_rows_run_by_length_and_come_back_in_order() -> None:
    mask = np.zeros((5, 8), np.int64)
    for i, n in enumerate([2, 8, 0, 5, 3]):  # row 2 attends to nothing: width 1
        mask[i, :n] = 1
    inputs = {"attention_mask": mask, "row": np.arange(5)}
    widths, out = _widths_and_rows(inputs)
    assert widths == [8, 3, 1]
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert _widths_and_rows(inputs, cut=False)[0] == [8, 8, 8]


def test_rows_without_a_text_mask_run_in_order() -> None:
    widths, out = _widths_and_rows({"row": np.arange(3)})
    assert widths == [None, None] and out[:, 0].tolist() == [0, 1, 2]
    assert map_by_length(lambda b: b["row"], {"row": np.zeros(0)}, 4).shape == (0,)


def test_zero_width_mask_and_ragged_inputs() -> None:
    widths, out = _widths_and_rows({"attention_mask": np.zeros((3, 0)), "row": np.arange(3)})
    assert widths == [0, 0] and out[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="different numbers of rows"):
        map_by_length(lambda b: b["row"], {"row": np.arange(3), "x": np.arange(2)}, 2)


def test_trim_padding_cuts_torch_batches_to_the_longest_attended_row():
    import torch

    from kdc.data.batching import trim_padding

    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    batch = {"input_ids": torch.arange(15).reshape(3, 5), "attention_mask": mask}
    out = trim_padding(batch)
    assert out["attention_mask"].shape == (3, 3) and torch.equal(
        out["input_ids"][:, :3], batch["input_ids"][:, :3]
    )
    assert trim_padding({"attention_mask": torch.zeros((2, 4))})["attention_mask"].shape == (2, 1)
    pixels = {"pixel_values": torch.zeros((2, 3, 4, 4))}
    assert trim_padding(pixels) is pixels


def test_a_left_padding_tokenizer_is_encoded_with_right_padding(tmp_path):
    """Trimming, augmentation and the teacher cache cut padding at the end of a row."""
    from tiny import tiny_text_adapter

    adapter = tiny_text_adapter(tmp_path)
    adapter.tokenizer.padding_side = "left"
    mask = adapter.encode(["good", "good bad good"])["attention_mask"]
    assert mask[:, 0].all() and not mask[:, -1].any()


@pytest.mark.parametrize("pairs", [False, True], ids=["texts", "text pairs"])
def test_texts_are_tokenized_in_chunks_into_the_arrays_returned(tmp_path, monkeypatch, pairs):
    """Chunk by chunk, the inputs are the tokenizer's for all rows at once (int64, padded to
    max_length), and what tokenizing allocates beside them stays a chunk's worth (all rows at
    once held several times the arrays in per-token Python objects)."""
    import tracemalloc

    import tiny

    import kdc.models.hf as hf

    model, tok = tiny.tiny_bert(tmp_path)
    texts = [t for t, _ in tiny.sentences(3000, 0)]
    rows = list(zip(texts, texts[::-1], strict=True)) if pairs else texts
    adapter = hf.HFTextAdapter(model.eval(), tok, max_length=32, text_pair=pairs)
    monkeypatch.setattr(hf, "ENCODE_ROWS", 128)
    tracemalloc.start()
    enc = adapter.encode(rows)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    second = texts[::-1] if pairs else None
    want = tok(texts, second, padding="max_length", truncation=True, max_length=32)
    assert set(enc) == set(adapter.input_names)
    for k, v in enc.items():
        assert v.dtype == np.int64 and np.array_equal(v, np.array(want[k]))
    assert peak < 1.5 * sum(v.nbytes for v in enc.values())
    assert adapter.encode([])["input_ids"].shape == (0, 32)
