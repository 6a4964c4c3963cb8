"""The in-memory form of a task's data, shared by every adapter and stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass
class Split:
    """Features (texts, text pairs as 2-tuples, or float32 arrays N×C×H×W) and integer labels
    (empty for embeddings)."""

    features: list[str] | list[tuple[str, str]] | np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    def take(self, idx: np.ndarray | list[int]) -> Split:
        idx = np.asarray(idx, dtype=np.int64)
        feats = (
            [self.features[i] for i in idx]
            if isinstance(self.features, list)
            else self.features[idx]
        )
        labels = self.labels[idx] if len(self.labels) else self.labels
        return Split(feats, labels)


def permuted(features: list | np.ndarray, order: np.ndarray) -> list | np.ndarray:
    """`features` in the order `order` gives (row i is row order[i]): a list as a new list, an
    array reordered in place, one row held aside per cycle of the permutation, so that the rows
    are not held twice (5,000 96-px images are 0.55 GB)."""
    if isinstance(features, list):
        return [features[i] for i in order]
    placed = np.zeros(len(order), bool)
    for start in range(len(order)):
        if placed[start]:
            continue
        held, i = features[start].copy(), start
        while order[i] != start:
            features[i] = features[order[i]]
            placed[i] = True
            i = order[i]
        features[i] = held
        placed[i] = True
    return features


@dataclass
class Dataset:
    """Train and eval splits of one task; `kind` says how a model adapter encodes features."""

    train: Split
    eval: Split
    label_names: list[str]
    kind: Literal["text", "image"]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "train": len(self.train),
            "eval": len(self.eval),
            "num_labels": self.num_labels,
            "labels": self.label_names,
            **({"notes": list(self.notes)} if self.notes else {}),  # what reading it assumed
        }
