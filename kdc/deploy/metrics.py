"""Quality metrics of a student or engine: registries by task, computed from numpy outputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import f1_score

from kdc.errors import UserError

Metric = Callable[[np.ndarray, np.ndarray], float]

NEIGHBOURS = 10
SPEARMAN_MAX_ITEMS = 2000  # pairs grow as n²; the first 2000 texts give ~2M pairs
_BLOCK = 1024  # query rows per block when ranking neighbours


def _logits(labels: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, logits = np.asarray(labels).reshape(-1), np.asarray(logits)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise UserError(
            f"logits of shape {logits.shape} do not match {len(labels)} labels",
            field="outputs",
            fix="pass N×K logits for N labels",
        )
    return labels.astype(np.int64), logits


def accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Share of rows whose argmax is the label."""
    labels, logits = _logits(labels, logits)
    return float(np.mean(logits.argmax(axis=1) == labels))


def macro_f1(labels: np.ndarray, logits: np.ndarray) -> float:
    """F1 averaged over the classes present in labels or predictions (sklearn, macro)."""
    labels, logits = _logits(labels, logits)
    return float(f1_score(labels, logits.argmax(axis=1), average="macro", zero_division=0))


def top5(labels: np.ndarray, logits: np.ndarray) -> float:
    """Share of rows whose label is among the 5 highest logits (needs more than 5 classes)."""
    labels, logits = _logits(labels, logits)
    if logits.shape[1] <= 5:
        raise UserError(
            f"top5 needs more than 5 classes, got {logits.shape[1]}",
            field="metrics",
            fix="use accuracy for tasks with 5 classes or fewer",
        )
    best = np.argpartition(-logits, 5, axis=1)[:, :5]
    return float(np.mean((best == labels[:, None]).any(axis=1)))


def agreement(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Share of rows where student and teacher predict the same class."""
    s, t = np.asarray(student_logits), np.asarray(teacher_logits)
    if s.shape[0] != t.shape[0] or s.ndim != 2 or t.ndim != 2:
        raise UserError(
            f"student {s.shape} and teacher {t.shape} logits differ in rows",
            field="teacher_outputs",
            fix="score both models on the same eval split",
        )
    return float(np.mean(s.argmax(axis=1) == t.argmax(axis=1)))


def accuracy_drop_ci(
    labels: np.ndarray, reference_logits: np.ndarray, logits: np.ndarray, z: float = 1.96
) -> list[float] | None:
    """Interval for `accuracy(reference) − accuracy(model)` on the same rows (95 % at z 1.96):
    the paired normal approximation over per-row differences in correctness, so rows both get
    right or both get wrong add no noise. A few hundred eval rows leave it points wide; one row
    gives none."""
    labels, ref = _logits(labels, reference_logits)
    _, out = _logits(labels, logits)
    d = (ref.argmax(axis=1) == labels).astype(np.float64) - (out.argmax(axis=1) == labels)
    if len(d) < 2:
        return None
    half = z * float(d.std(ddof=1) / np.sqrt(len(d)))
    mean = float(d.mean())
    return [round(mean - half, 6), round(mean + half, 6)]


def _normalise(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise UserError(
            f"embeddings must be N×D, got shape {emb.shape}",
            field="outputs",
            fix="pass one embedding row per text",
        )
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _pair(student: np.ndarray, teacher: np.ndarray, same_dim: bool) -> tuple:
    s, t = _normalise(student), _normalise(teacher)
    if len(s) != len(t) or (same_dim and s.shape[1] != t.shape[1]):
        raise UserError(
            f"student {s.shape} and teacher {t.shape} embeddings do not match",
            field="teacher_outputs",
            fix="encode the same texts; compare equal widths for this metric",
        )
    return s, t


def mean_cosine(student_emb: np.ndarray, teacher_emb: np.ndarray) -> float:
    """Mean cosine similarity between each text's student and teacher embedding."""
    s, t = _pair(student_emb, teacher_emb, same_dim=True)
    return float(np.mean(np.sum(s * t, axis=1)))


def spearman(student_emb: np.ndarray, teacher_emb: np.ndarray) -> float:
    """Spearman correlation of all pairwise cosine similarities, student vs teacher (first
    SPEARMAN_MAX_ITEMS texts; nan when either side's similarities are constant)."""
    s, t = _pair(student_emb, teacher_emb, same_dim=False)
    s, t = s[:SPEARMAN_MAX_ITEMS], t[:SPEARMAN_MAX_ITEMS]
    if len(s) < 3:
        raise UserError(
            f"spearman needs at least 3 texts, got {len(s)}",
            field="outputs",
            fix="evaluate on more held-out texts",
        )
    iu = np.triu_indices(len(s), k=1)
    return float(spearmanr((s @ s.T)[iu], (t @ t.T)[iu]).statistic)


def _neighbours(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Indices (N×k) of each query's k most similar corpus rows, excluding its own row."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), _BLOCK):
        sims = queries[start : start + _BLOCK] @ corpus.T
        rows = np.arange(len(sims))
        sims[rows, rows + start] = -np.inf
        out[start : start + len(sims)] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def _recall(truth: np.ndarray, found: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, found, strict=True)]))


def _k(n: int) -> int:
    if n < 2:
        raise UserError(
            f"neighbour recall needs at least 2 texts, got {n}",
            field="outputs",
            fix="evaluate on more held-out texts",
        )
    return min(NEIGHBOURS, n - 1)


def neighbour_recall_at_10_asym(student_emb: np.ndarray, teacher_emb: np.ndarray) -> float:
    """Retrieval against a teacher-encoded corpus: share of the teacher's 10 nearest neighbours
    of text i that a student-encoded query i also retrieves (i excluded), averaged over i."""
    s, t = _pair(student_emb, teacher_emb, same_dim=True)
    k = _k(len(t))
    return _recall(_neighbours(t, t, k), _neighbours(s, t, k))


def neighbour_recall_at_10_sym(student_emb: np.ndarray, teacher_emb: np.ndarray) -> float:
    """As the asymmetric recall, but the student encodes both the queries and the corpus."""
    s, t = _pair(student_emb, teacher_emb, same_dim=False)
    k = _k(len(t))
    return _recall(_neighbours(t, t, k), _neighbours(s, s, k))


METRICS: dict[str, Metric] = {"accuracy": accuracy, "macro_f1": macro_f1, "top5": top5}
EMBEDDING_METRICS: dict[str, Metric] = {
    "mean_cosine": mean_cosine,
    "spearman": spearman,
    "neighbour_recall_at_10_asym": neighbour_recall_at_10_asym,
    "neighbour_recall_at_10_sym": neighbour_recall_at_10_sym,
}
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "text-classification": ("accuracy", "macro_f1"),
    "image-classification": ("accuracy", "macro_f1"),
    "sentence-embedding": tuple(EMBEDDING_METRICS),
}


def _task(task: str) -> tuple[str, ...]:
    if task not in TASK_METRICS:
        raise UserError(
            f"unknown task '{task}'", field="task", fix=f"use one of {', '.join(TASK_METRICS)}"
        )
    return TASK_METRICS[task]


def metrics_for(task: str, num_classes: int | None = None) -> list[str]:
    """Metric names reported for a task; top5 is added for classification with >5 classes."""
    names = list(_task(task))
    if "accuracy" in names and num_classes is not None and num_classes > 5:
        names.append("top5")
    return names


def primary_metric(task: str) -> str:
    """The metric constraints and regression checks use: the task's first metric."""
    return _task(task)[0]


def compute(
    task: str,
    labels: np.ndarray | None,
    outputs: np.ndarray,
    teacher_outputs: np.ndarray | None = None,
) -> dict[str, float | list[float] | None]:
    """Every metric of the task. Classification: labels vs logits, plus `agreement` with the
    teacher and `accuracy_drop_ci95` (`accuracy_drop_ci`) when its logits are given.
    Embeddings: student vs teacher (required; labels unused)."""
    if task == "sentence-embedding":
        if teacher_outputs is None:
            raise UserError(
                "embedding metrics compare with the teacher, none given",
                field="teacher_outputs",
                fix="pass the teacher's embeddings",
            )
        return {n: EMBEDDING_METRICS[n](outputs, teacher_outputs) for n in metrics_for(task)}
    if labels is None:
        raise UserError(
            "classification metrics need labels", field="labels", fix="evaluate on a labelled split"
        )
    num_classes = np.asarray(outputs).shape[-1]
    result = {n: METRICS[n](labels, outputs) for n in metrics_for(task, num_classes)}
    if teacher_outputs is not None:
        result["agreement"] = agreement(outputs, teacher_outputs)
        result["accuracy_drop_ci95"] = accuracy_drop_ci(labels, teacher_outputs, outputs)
    return result
