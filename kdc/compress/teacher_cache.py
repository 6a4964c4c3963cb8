"""The frozen teacher's outputs on training rows, kept per row across epochs.

During distillation the teacher runs in eval mode without gradients, so its logits and tapped
features on a row are the same every epoch. Rows that reach it unchanged (not perturbed by
`distill.augment`) are looked up instead of run again; only perturbed and not yet seen rows go
through the teacher. Text rows are stored cut to their attended length and re-padded with zeros:
every loss masks padded positions (losses.py), so the result equals a full teacher run up to float
rounding. On the sentiment example this removes about half of the teacher's forward passes from
the second epoch on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kdc.data.batching import row_lengths, trim_padding

Batch = dict[str, torch.Tensor]
Outputs = tuple[torch.Tensor, dict[str, torch.Tensor]]
MB = 1 << 20


def seq_axis(value: torch.Tensor, heads: bool) -> int | None:
    """The sequence axis of a tapped text feature: B×heads×L×d (attention taps) or B×L×D; none
    for pooled B×D features."""
    if heads:
        return 2
    return 1 if value.dim() == 3 else None


class TeacherCache:
    """Teacher outputs per training row (by its index in the training set), up to `limit` bytes
    (0: off). `heads` names the tapped features split into attention heads (sequence on axis 2)."""

    def __init__(self, heads: set[str], limit: int) -> None:
        self.heads = heads
        self.limit = limit
        self.size = 0
        self.rows: dict[int, Outputs] = {}
        self.ran = self.looked_up = 0

    def stats(self) -> dict:
        """Rows the teacher ran on and rows looked up instead, and what the cache holds."""
        return {
            "rows_run": self.ran,
            "rows_looked_up": self.looked_up,
            "rows_kept": len(self.rows),
            "kept_mb": round(self.size / MB, 1),
        }

    def _axis(self, name: str, value: torch.Tensor, text: bool) -> int | None:
        return seq_axis(value, name in self.heads) if text else None

    def _row(self, out: Outputs, i: int, length: int | None) -> Outputs:
        """Row `i` of batch outputs `out`, text features cut to `length` positions."""
        logits, feats = out
        row = {}
        for name, v in feats.items():
            axis = self._axis(name, v, length is not None)
            row[name] = v[i] if axis is None else v[i].narrow(axis - 1, 0, length)
        return logits[i], row

    def outputs(
        self,
        batch: Batch,
        rows: np.ndarray,
        changed: np.ndarray,
        run: Callable[[Batch], Outputs],
    ) -> Outputs:
        """The teacher's (logits, features) on `batch`, whose i-th row is training row `rows[i]`,
        perturbed where `changed[i]`: cached rows are looked up, the others run (as one batch) and
        the unchanged ones among them stored."""
        lengths = row_lengths(batch)
        held = np.array([int(r) in self.rows for r in rows], dtype=bool)
        need = changed | ~held
        self.ran += int(need.sum())
        self.looked_up += int((~need).sum())
        if need.all():
            out = run(batch)
            self._store(out, np.arange(len(rows)), rows, changed, lengths)
            return out
        parts: list[Outputs | None] = [None] * len(rows)
        idx = np.flatnonzero(need)
        if len(idx):
            sub = trim_padding({k: v[torch.from_numpy(idx)] for k, v in batch.items()})
            out = run(sub)
            self._store(out, idx, rows, changed, lengths)
            for j, i in enumerate(idx):
                parts[i] = self._row(out, j, None if lengths is None else int(lengths[i]))
        for i in np.flatnonzero(~need):
            parts[i] = self.rows[int(rows[i])]
        width = None if lengths is None else batch["attention_mask"].shape[1]
        return self._stack(parts, width)  # type: ignore[arg-type]

    def _store(
        self,
        out: Outputs,
        idx: np.ndarray,
        rows: np.ndarray,
        changed: np.ndarray,
        lengths: np.ndarray | None,
    ) -> None:
        """Keep copies of the unchanged rows among batch rows `idx` (row j of `out` is batch row
        idx[j]) while the cache is under its limit."""
        for j, i in enumerate(idx):
            if changed[i] or self.size >= self.limit:
                continue
            logits, feats = self._row(out, j, None if lengths is None else int(lengths[i]))
            kept = logits.clone(), {k: v.clone() for k, v in feats.items()}
            self.size += sum(t.numel() * t.element_size() for t in (kept[0], *kept[1].values()))
            self.rows[int(rows[i])] = kept

    def _stack(self, parts: list[Outputs], width: int | None) -> Outputs:
        """Batch outputs from per-row ones, text features zero-padded to `width` positions."""
        logits = torch.stack([p[0] for p in parts])
        feats = {}
        for name, first in parts[0][1].items():
            axis = self._axis(name, first.unsqueeze(0), width is not None)
            if axis is None:
                feats[name] = torch.stack([p[1][name] for p in parts])
                continue
            shape = list(first.shape)
            shape[axis - 1] = width
            out = first.new_zeros((len(parts), *shape))
            for i, p in enumerate(parts):
                v = p[1][name]
                out[i].narrow(axis - 1, 0, v.shape[axis - 1]).copy_(v)
            feats[name] = out
        return logits, feats
