"""Input augmentation for distillation: a share of each training batch is perturbed and the teacher
labels the perturbed rows on the fly, so the student learns the teacher's function on more inputs
than the training set holds (TinyBERT's data augmentation, MixKD's mixing; Jiao et al. 2020,
Liang et al. 2021). Perturbed rows take the teacher's class as their hard label: a spliced review
has no label of its own.

An augmentation is `(batch, rng, prob) -> (batch, changed)`: `changed` is a boolean mask of the
rows that were perturbed. `AUGMENTS[name](inputs, teacher)` makes one for the training inputs and
the teacher (a ModelAdapter); `auto` picks by input kind (AUTO_AUGMENT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from kdc.data.batching import trim_padding
from kdc.errors import UserError

if TYPE_CHECKING:
    from kdc.models.base import ModelAdapter

Batch = dict[str, torch.Tensor]
Augment = Callable[[Batch, np.random.Generator, float], tuple[Batch, np.ndarray]]
DELETE_PROB = 0.1  # share of a row's tokens dropped by token deletion
SWAP_PROB = 0.3  # share of a row's tokens replaced by token substitution
NEIGHBOURS = 10  # candidates per token: its nearest tokens in the teacher's embedding table
SIM_ROWS = 2048  # rows of the token-similarity matrix computed at once
MAX_SHIFT = 0.1  # largest image translation, as a share of its side


def _token_order(
    length: list[int], rng: np.random.Generator, i: int, width: int, second: list[int] | None
) -> list:
    """(row, position) pairs of row `i` after splicing with another row or deleting tokens, at
    most `width` long. The start and end special tokens (first and last position) are kept. Text
    pairs (`second`: where each row's second text starts, by its token types) splice whole texts,
    row i's first with row j's second, and keep the separator between them."""
    n = length[i]
    if n <= 3:
        return [(i, p) for p in range(n)]
    j = int(rng.integers(len(length)))
    if rng.random() < 0.5 and j != i and length[j] > 3:
        if second:  # [CLS] first text [SEP] of row i, second text [SEP] of row j
            order = [(i, p) for p in range(second[i])]
            order += [(j, p) for p in range(second[j], length[j])]
        else:
            head = int(rng.integers(2, n - 1))  # keep [CLS] and at least one token of row i
            tail = int(rng.integers(1, length[j] - 1))
            order = [(i, p) for p in range(head)] + [(j, p) for p in range(tail, length[j])]
        return order if len(order) <= width else order[: width - 1] + [(i, n - 1)]
    if not second:
        keep = [p for p in range(1, n - 1) if rng.random() >= DELETE_PROB] or [1]
        return [(i, 0)] + [(i, p) for p in keep] + [(i, n - 1)]
    sep = second[i] - 1  # the separator ending a pair's first text: kept, and a token of each text
    first = [p for p in range(1, sep) if rng.random() >= DELETE_PROB] or [1]
    rest = [p for p in range(sep + 1, n - 1) if rng.random() >= DELETE_PROB] or [sep + 1]
    return [(i, p) for p in (0, *first, sep, *rest, n - 1)]


def _second_texts(batch: Batch, length: list[int]) -> list[int] | None:
    """Where each row's second text starts (its first token of type 1), where every row is a
    text pair told apart by `token_type_ids`; None otherwise (one text a row, or a model that
    reads a pair's separators alone)."""
    types = batch.get("token_type_ids")
    if types is None or types.dim() != 2:
        return None
    starts = []
    for row, n in zip(types.tolist(), length, strict=True):
        start = next((p for p, t in enumerate(row[:n]) if t), None)
        if start is None or start < 2 or start >= n - 1:
            return None
        starts.append(start)
    return starts


def splice_text(batch: Batch, rng: np.random.Generator, prob: float) -> tuple[Batch, np.ndarray]:
    """Text: each row, with probability `prob`, becomes the head of itself followed by the tail
    of another row of the batch (both cut at random; text pairs: its first text and the other
    row's second), or itself with 10 % of its tokens deleted (never a pair's separator). Every
    sequence input (ids, type ids, mask) is rearranged alike; rows keep the batch width."""
    return splice_rows(batch, rng, rng.random(len(batch["input_ids"])) < prob)


def splice_rows(
    batch: Batch, rng: np.random.Generator, chosen: np.ndarray
) -> tuple[Batch, np.ndarray]:
    """`splice_text` on the `chosen` rows."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        raise ValueError("text augmentation needs an attention_mask input")
    b, width = mask.shape
    length = mask.sum(1).tolist()
    same = [[(i, p) for p in range(length[i])] for i in range(b)]
    second = _second_texts(batch, length)
    orders = [
        _token_order(length, rng, i, width, second) if chosen[i] else same[i] for i in range(b)
    ]
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


class TokenSwap:
    """Text: each row, with probability `prob`, has `SWAP_PROB` of its tokens (not the first and
    last) replaced by one of their `NEIGHBOURS` nearest tokens by cosine in the teacher's input
    embedding table, among the tokens the training rows use (TinyBERT's word replacement, with the
    teacher's own embeddings for GloVe's)."""

    def __init__(
        self, inputs: dict[str, np.ndarray], table: torch.Tensor, special: tuple[int, ...] = ()
    ) -> None:
        ids, mask = inputs["input_ids"], inputs["attention_mask"].astype(bool)
        inner = mask.copy()
        inner[:, 0] = False
        inner[np.arange(len(mask)), np.maximum(mask.sum(1) - 1, 0)] = False  # last real token
        vocab = np.unique(ids[inner]).astype(np.int64)
        self.vocab = vocab[~np.isin(vocab, special)]  # never [UNK], [SEP], [MASK] in or out
        if len(self.vocab) and self.vocab[-1] >= len(table):
            raise UserError(
                f"token id {self.vocab[-1]} is beyond the teacher's {len(table)}-row embedding "
                "table",
                field="distill.augment",
                fix="use splice",
            )
        emb = F.normalize(table.detach()[torch.from_numpy(self.vocab)].float(), dim=1)
        k = max(min(NEIGHBOURS, len(self.vocab) - 1), 0)
        near = []
        for start in range(0, len(emb), SIM_ROWS):  # a block of rows at a time: V x V is GBs
            sim = emb[start : start + SIM_ROWS] @ emb.T
            rows = torch.arange(len(sim))
            sim[rows, rows + start] = -2.0  # never the token itself
            near.append(sim.topk(k, dim=1).indices)
        self.near = self.vocab[torch.cat(near).numpy()] if near else np.zeros((0, 0), np.int64)

    def __call__(
        self, batch: Batch, rng: np.random.Generator, prob: float
    ) -> tuple[Batch, np.ndarray]:
        return self.rows(batch, rng, rng.random(len(batch["input_ids"])) < prob)

    def rows(
        self, batch: Batch, rng: np.random.Generator, chosen: np.ndarray
    ) -> tuple[Batch, np.ndarray]:
        """Substitution on the `chosen` rows."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.near.shape[1] == 0:  # the training rows use fewer than two inner tokens
            return batch, np.zeros(len(ids), dtype=bool)
        out = ids.clone()
        changed = chosen.copy()
        length = mask.sum(1).tolist()
        for i in np.flatnonzero(changed):
            pos = np.arange(1, length[i] - 1)
            pos = pos[rng.random(len(pos)) < SWAP_PROB]
            row = ids[i, pos].numpy()
            at = np.searchsorted(self.vocab, row).clip(0, len(self.vocab) - 1)
            known = self.vocab[at] == row
            pick = rng.integers(self.near.shape[1], size=len(pos))
            if known.any():
                out[i, pos[known]] = torch.from_numpy(self.near[at[known], pick[known]]).to(
                    out.dtype
                )
            changed[i] = not torch.equal(out[i], ids[i])
        return {**batch, "input_ids": out}, changed


def input_embeddings(teacher: ModelAdapter | None) -> torch.Tensor:
    """The teacher's token embedding table: Hugging Face `get_input_embeddings` of the wrapped
    model (or of the module), else the module's first nn.Embedding."""
    if teacher is not None:
        for m in (getattr(teacher, "model", None), teacher.module):
            get = getattr(m, "get_input_embeddings", None)
            if callable(get) and isinstance(emb := get(), nn.Embedding):
                return emb.weight
        emb = next((m for m in teacher.module.modules() if isinstance(m, nn.Embedding)), None)
        if emb is not None:
            return emb.weight
    raise UserError(
        "token substitution needs the teacher's token embedding table; none was found",
        field="distill.augment",
        fix="use splice",
    )


def token_swap(inputs: dict[str, np.ndarray], teacher: ModelAdapter | None) -> TokenSwap:
    """`TokenSwap` over the teacher's embedding table, its tokenizer's special tokens excluded."""
    special = getattr(getattr(teacher, "tokenizer", None), "all_special_ids", None) or ()
    return TokenSwap(inputs, input_embeddings(teacher), tuple(special))


def mix_text(inputs: dict[str, np.ndarray], teacher: ModelAdapter | None) -> Augment:
    """Text: each perturbed row is spliced or cut (`splice`) or has tokens substituted (`swap`),
    equally often."""
    swap = token_swap(inputs, teacher)

    def mix(batch: Batch, rng: np.random.Generator, prob: float) -> tuple[Batch, np.ndarray]:
        pick = rng.random(len(batch["input_ids"]))
        batch, swapped = swap.rows(batch, rng, pick < prob / 2)
        batch, spliced = splice_rows(batch, rng, (pick >= prob / 2) & (pick < prob))
        return batch, swapped | spliced

    return mix


AugmentFactory = Callable[[dict[str, np.ndarray], "ModelAdapter | None"], Augment]
AUGMENTS: dict[str, AugmentFactory] = {
    "splice": lambda inputs, teacher: splice_text,
    "swap": token_swap,
    "mix": mix_text,
    "shift": lambda inputs, teacher: shift_image,
}
AUTO_AUGMENT = {"text": "splice", "image": "shift"}  # by input kind
KIND = {"splice": "text", "swap": "text", "mix": "text", "shift": "image"}  # inputs each fits
TASK_KIND = {
    "text-classification": "text",
    "sentence-embedding": "text",
    "image-classification": "image",
}


def input_kind(inputs: dict[str, np.ndarray]) -> str:
    """`text` (token sequences with an attention mask), `image` (N×C×H×W) or `other`."""
    if inputs.get("attention_mask") is not None and inputs["attention_mask"].ndim == 2:
        return "text"
    return "image" if any(v.ndim == 4 for v in inputs.values()) else "other"


def misfit(name: str, kind: str) -> UserError:
    """The error for augmentation `name` on `kind` inputs, naming the ones that fit."""
    fits = [n for n, k in KIND.items() if k == kind]
    return UserError(
        f"augmentation '{name}' does not apply to {kind} inputs",
        field="distill.augment",
        fix=f"use {' or '.join(['none', 'auto', *fits]) if fits else 'none'}",
    )


def augment_name(name: str | None, inputs: dict[str, np.ndarray]) -> str | None:
    """The augmentation `distill.augment` names for these inputs (`auto`: by input kind), None
    when off; a name that does not fit the inputs is a UserError."""
    if name in (None, "none"):
        return None
    kind = input_kind(inputs)
    if kind not in AUTO_AUGMENT or (name != "auto" and KIND[name] != kind):
        raise misfit(name, kind)
    return AUTO_AUGMENT[kind] if name == "auto" else name


def resolve_augment(
    name: str | None, inputs: dict[str, np.ndarray], teacher: ModelAdapter | None = None
) -> Augment | None:
    """The augmentation `distill.augment` names, made for these training inputs and teacher."""
    key = augment_name(name, inputs)
    return None if key is None else AUGMENTS[key](inputs, teacher)
