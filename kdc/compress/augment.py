"""Input augmentation for distillation: a share of each training batch is perturbed and the teacher
labels the perturbed rows on the fly, so the student learns the teacher's function on more inputs
than the training set holds (TinyBERT's data augmentation, MixKD's mixing; Jiao et al. 2020,
Liang et al. 2021). Perturbed rows take the teacher's class as their hard label: a spliced review
has no label of its own.

`AUGMENTS[name](batch, rng, prob) -> (batch, changed)`: `changed` is a boolean mask of the rows
that were perturbed. `auto` picks by input kind (AUTO_AUGMENT).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from kdc.data.batching import trim_padding
from kdc.errors import UserError

Batch = dict[str, torch.Tensor]
Augment = Callable[[Batch, np.random.Generator, float], tuple[Batch, np.ndarray]]
DELETE_PROB = 0.1  # share of a row's tokens dropped by token deletion
MAX_SHIFT = 0.1  # largest image translation, as a share of its side


def _token_order(length: list[int], rng: np.random.Generator, i: int, width: int) -> list:
    """(row, position) pairs of row `i` after splicing with another row or deleting tokens, at
    most `width` long. The start and end special tokens (first and last position) are kept."""
    n = length[i]
    if n <= 3:
        return [(i, p) for p in range(n)]
    j = int(rng.integers(len(length)))
    if rng.random() < 0.5 and j != i and length[j] > 3:
        head = int(rng.integers(2, n - 1))  # keep [CLS] and at least one token of row i
        tail = int(rng.integers(1, length[j] - 1))
        order = [(i, p) for p in range(head)] + [(j, p) for p in range(tail, length[j])]
        return order if len(order) <= width else order[: width - 1] + [(i, n - 1)]
    keep = [p for p in range(1, n - 1) if rng.random() >= DELETE_PROB] or [1]
    return [(i, 0)] + [(i, p) for p in keep] + [(i, n - 1)]


def splice_text(batch: Batch, rng: np.random.Generator, prob: float) -> tuple[Batch, np.ndarray]:
    """Text: each row, with probability `prob`, becomes the head of itself followed by the tail
    of another row of the batch (both cut at random), or itself with 10 % of its tokens deleted.
    Every sequence input (ids, type ids, mask) is rearranged alike; rows keep the batch width."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        raise ValueError("text augmentation needs an attention_mask input")
    b, width = mask.shape
    length = mask.sum(1).tolist()
    changed = rng.random(b) < prob
    same = [[(i, p) for p in range(length[i])] for i in range(b)]
    orders = [_token_order(length, rng, i, width) if changed[i] else same[i] for i in range(b)]
    changed = np.array([o != s for o, s in zip(orders, same, strict=True)])  # really perturbed
    rows = torch.zeros(b, width, dtype=torch.long)
    cols = torch.zeros(b, width, dtype=torch.long)
    pad = torch.ones(b, width, dtype=torch.bool)
    for i, order in enumerate(orders):
        rows[i, : len(order)] = torch.tensor([r for r, _ in order])
        cols[i, : len(order)] = torch.tensor([p for _, p in order])
        pad[i, : len(order)] = False
    pad_row, pad_col = np.nonzero((mask == 0).numpy())
    out = {}
    for k, v in batch.items():
        if v.dim() != 2 or v.shape != mask.shape:
            out[k] = v
            continue
        fill = v[pad_row[0], pad_col[0]] if len(pad_row) else torch.zeros((), dtype=v.dtype)
        out[k] = torch.where(pad, fill if k != "attention_mask" else 0, v[rows, cols])
    return trim_padding(out), changed


def shift_image(batch: Batch, rng: np.random.Generator, prob: float) -> tuple[Batch, np.ndarray]:
    """Images (N×C×H×W): each, with probability `prob`, translated by up to 10 % of its side in
    each direction, the uncovered border filled by replicating the edge."""
    (name, x), *rest = [(k, v) for k, v in batch.items() if v.dim() == 4]
    if rest:
        raise ValueError("image augmentation expects one image input")
    changed = rng.random(len(x)) < prob
    h, w = x.shape[-2:]
    m = max(1, round(MAX_SHIFT * min(h, w)))
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    out = x.clone()
    for i in np.flatnonzero(changed):
        dy, dx = (int(v) for v in rng.integers(-m, m + 1, size=2))
        changed[i] = (dy, dx) != (0, 0)
        out[i] = padded[i, :, m + dy : m + dy + h, m + dx : m + dx + w]
    return {**batch, name: out}, changed


AUGMENTS: dict[str, Augment] = {"splice": splice_text, "shift": shift_image}
AUTO_AUGMENT = {"text": "splice", "image": "shift"}  # by input kind


def input_kind(inputs: dict[str, np.ndarray]) -> str:
    """`text` (token sequences with an attention mask), `image` (N×C×H×W) or `other`."""
    if inputs.get("attention_mask") is not None and inputs["attention_mask"].ndim == 2:
        return "text"
    return "image" if any(v.ndim == 4 for v in inputs.values()) else "other"


def resolve_augment(name: str | None, inputs: dict[str, np.ndarray]) -> Augment | None:
    """The augmentation `distill.augment` names for these inputs (`auto`: by input kind), None
    when off."""
    if name in (None, "none"):
        return None
    kind = input_kind(inputs)
    if kind not in AUTO_AUGMENT or name not in ("auto", AUTO_AUGMENT[kind]):
        raise UserError(
            f"augmentation '{name}' does not apply to {kind} inputs",
            field="distill.augment",
            fix=f"use {'auto or ' + AUTO_AUGMENT[kind] if kind in AUTO_AUGMENT else 'none'}",
        )
    return AUGMENTS[AUTO_AUGMENT[kind]]
