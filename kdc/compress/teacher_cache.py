"""The frozen teacher's outputs on training rows, kept per row across epochs.

During distillation the teacher runs in eval mode without gradients, so its logits and tapped
features on a row are the same every epoch. Rows that reach it unchanged (not perturbed by
`distill.augment`) are looked up instead of run again; only perturbed and not yet seen rows go
through the teacher. Text rows' token features (`Tap.seq_axis`: `embeddings`, `hidden{i}`, the
attention heads' query/key/value) are stored cut to the row's attended length and re-padded with
zeros: the losses that read them mask padded positions (losses.py), so the result equals a full
teacher run up to float rounding. A text feature of another layout (a `pooled` tap that is B×L×F,
the input of a head's layer in models without a pooler: its token axis is not declared by its tap)
is not cut, and the teacher then runs on every batch. On the sentiment example the teacher ran on
2,626 rows and looked up 1,710. Rows are kept on the host (the limit is host memory) and returned
on the batch's device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kdc.compress.augment import Batch
from kdc.data.batching import row_lengths, trim_padding
from kdc.models.device import CPU, on_device

Outputs = tuple[torch.Tensor, dict[str, torch.Tensor]]
MB = 1 << 20


class Uncacheable(ValueError):
    """A tapped text feature whose padded positions a loss may read."""


class TeacherCache:
    """Teacher outputs per training row (by its index in the training set), up to `limit` bytes
    in each process (0: off). `axes`: the token axis of each tapped token feature
    (`Tap.seq_axis`)."""

    def __init__(self, axes: dict[str, int], limit: int) -> None:
        self.axes = axes
        self.limit = limit
        self.size = 0
        self.kept: dict[int, Outputs] = {}
        self.ran = self.looked_up = 0

    def stats(self) -> dict:
        """Rows the teacher ran on and rows looked up instead (the probe batch that sizes the
        loss projections included), and what the cache holds."""
        return {
            "rows_run": self.ran,
            "rows_looked_up": self.looked_up,
            "rows_kept": len(self.kept),
            "kept_mb": round(self.size / MB, 1),
        }

    def _axis(self, name: str, value: torch.Tensor, text: bool) -> int | None:
        """Where a text row's feature is cut: its token axis; none for one vector per row."""
        if not text:
            return None
        if name in self.axes:
            return self.axes[name]
        if value.dim() <= 2:
            return None
        raise Uncacheable(f"tapped feature '{name}' of shape {tuple(value.shape)}")

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
        index: np.ndarray,
        changed: np.ndarray,
        run: Callable[[Batch], Outputs],
    ) -> Outputs:
        """The teacher's (logits, features) on `batch`, whose i-th row is training row
        `index[i]`, perturbed where `changed[i]`: kept rows are looked up, the others run (as one
        batch) and the unchanged ones among them kept. Outputs are on the batch's device."""
        lengths = row_lengths(batch)
        held = np.array([int(r) in self.kept for r in index], dtype=bool)
        need = changed | ~held
        self.ran += int(need.sum())
        self.looked_up += int((~need).sum())
        if need.all():
            out = run(batch)
            self._keep(out, np.arange(len(index)), index, changed, lengths)
            return out
        device = next(iter(batch.values())).device
        parts: dict[int, Outputs] = {
            i: on_device(self.kept[int(index[i])], device) for i in np.flatnonzero(~need)
        }
        idx = np.flatnonzero(need)
        if len(idx):
            rows = torch.from_numpy(idx).to(device)
            out = run(trim_padding({k: v[rows] for k, v in batch.items()}))
            self._keep(out, idx, index, changed, lengths)
            for j, i in enumerate(idx):
                parts[i] = self._row(out, j, None if lengths is None else int(lengths[i]))
        width = None if lengths is None else batch["attention_mask"].shape[1]
        return self._stack([parts[i] for i in range(len(index))], width)

    def _keep(
        self,
        out: Outputs,
        idx: np.ndarray,
        index: np.ndarray,
        changed: np.ndarray,
        lengths: np.ndarray | None,
    ) -> None:
        """Keep host copies of the unchanged rows among batch rows `idx` (row j of `out` is batch
        row idx[j]) that fit in the limit; off for good at a feature that cannot be cut."""
        for j, i in enumerate(idx):
            if changed[i] or not self.limit:
                continue
            try:
                logits, feats = self._row(out, j, None if lengths is None else int(lengths[i]))
            except Uncacheable:
                self.limit = 0
                return
            kept = on_device((logits, feats), CPU, copy=True)
            size = sum(t.numel() * t.element_size() for t in (kept[0], *kept[1].values()))
            if self.size + size > self.limit:
                continue
            self.size += size
            self.kept[int(index[i])] = kept

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
