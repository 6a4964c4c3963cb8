"""The validation score distillation records per epoch: accuracy, or the task's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from kdc.models.base import ModelAdapter

if TYPE_CHECKING:
    from kdc.compress.distill import DistillData


def evaluate_accuracy(
    adapter: ModelAdapter, inputs: dict[str, np.ndarray], labels: np.ndarray
) -> float:
    logits = adapter.forward_numpy(inputs)
    return float((logits.argmax(-1) == labels).mean())


def evaluate_cosine(adapter: ModelAdapter, data: DistillData) -> float:
    """Mean cosine of the student's validation embeddings to the teacher's (Spearman of pairwise
    similarities when the widths differ)."""
    from kdc.deploy.metrics import mean_cosine, spearman

    out, ref = adapter.forward_numpy(data.val), data.val_teacher_logits
    if ref is None:
        raise ValueError("embedding validation needs the teacher's validation embeddings")
    return (mean_cosine if out.shape[1] == ref.shape[1] else spearman)(out, ref)


# The validation score (name, function) recorded per epoch, by task (else accuracy): it picks the
# epoch under `select: best` and drives early stopping.
SELECTION: dict[str, tuple[str, Callable[[ModelAdapter, DistillData], float]]] = {
    "sentence-embedding": ("mean_cosine", evaluate_cosine),
}


def validation_uses_teacher(task: str | None) -> bool:
    """Whether `task`'s validation score compares with the teacher's validation outputs."""
    return task in SELECTION and SELECTION[task][1] is evaluate_cosine


def selection_metric(task: str | None) -> str:
    """The name of the validation score `evaluate` computes for `task`."""
    return SELECTION[task][0] if task in SELECTION else "accuracy"


def evaluate(adapter: ModelAdapter, data: DistillData) -> float:
    """The validation score of `adapter`: the task's SELECTION function, else accuracy."""
    if data.task in SELECTION:
        return SELECTION[data.task][1](adapter, data)
    return evaluate_accuracy(adapter, data.val, data.val_labels)
