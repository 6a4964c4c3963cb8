import numpy as np
import pytest

from kdc.deploy import metrics as M
from kdc.errors import UserError


def _onehot(pred: list[int], k: int) -> np.ndarray:
    logits = np.zeros((len(pred), k))
    logits[np.arange(len(pred)), pred] = 1.0
    return logits


def _angles(deg: list[float]) -> np.ndarray:
    rad = np.deg2rad(deg)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_accuracy_and_macro_f1_on_known_predictions():
    labels = np.array([0, 0, 1, 1])
    logits = _onehot([0, 1, 1, 1], 2)
    assert M.accuracy(labels, logits) == 0.75
    # class 0: P=1, R=0.5 -> F1=2/3; class 1: P=2/3, R=1 -> F1=0.8
    assert M.macro_f1(labels, logits) == pytest.approx((2 / 3 + 0.8) / 2)


def test_top5_counts_label_among_five_best_and_needs_more_than_five_classes():
    logits = np.tile(np.arange(7, dtype=float), (2, 1))  # best five are classes 2..6
    assert M.top5(np.array([6, 0]), logits) == 0.5
    with pytest.raises(UserError, match="more than 5 classes"):
        M.top5(np.array([0]), np.zeros((1, 5)))


def test_agreement_is_argmax_match_share():
    assert M.agreement(_onehot([0, 1, 2, 2], 3), _onehot([0, 1, 1, 2], 3)) == 0.75


def test_mismatched_rows_are_user_errors():
    with pytest.raises(UserError, match="labels"):
        M.accuracy(np.array([0, 1, 0]), np.zeros((2, 2)))


def test_embedding_metrics_are_perfect_when_student_equals_teacher():
    emb = np.random.default_rng(0).normal(size=(40, 8))
    assert M.mean_cosine(emb, emb) == pytest.approx(1.0)
    assert M.spearman(emb, emb) == pytest.approx(1.0)
    assert M.neighbour_recall_at_10_asym(emb, emb) == 1.0
    assert M.neighbour_recall_at_10_sym(emb, emb) == 1.0


def test_mean_cosine_of_orthogonal_embeddings_is_zero():
    assert M.mean_cosine(_angles([0, 0]), _angles([90, 90])) == pytest.approx(0.0)


def test_sym_recall_ignores_a_rotation_of_the_student_space():
    teacher = np.random.default_rng(1).normal(size=(30, 2))
    c, s = np.cos(1.0), np.sin(1.0)
    student = teacher @ np.array([[c, -s], [s, c]])
    assert M.neighbour_recall_at_10_sym(student, teacher) == 1.0
    assert M.spearman(student, teacher) == pytest.approx(1.0)


def test_recall_on_a_hand_made_case(monkeypatch):
    monkeypatch.setattr(M, "NEIGHBOURS", 1)
    teacher = _angles([0, 10, 90, 100])  # nearest: 0<->1, 2<->3
    student = _angles([0, 10, 50, 100])  # text 2 moved towards text 1
    # sym: student neighbours 0->1, 1->0, 2->1 (wrong), 3->2
    assert M.neighbour_recall_at_10_sym(student, teacher) == 0.75
    # asym: student query 2 (50°) against teacher {0°, 10°, 100°} finds 1 (wrong)
    assert M.neighbour_recall_at_10_asym(student, teacher) == 0.75


def test_recall_uses_every_other_text_when_fewer_than_eleven():
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    assert M.neighbour_recall_at_10_sym(student, teacher) == 1.0
    with pytest.raises(UserError, match="at least 2"):
        M.neighbour_recall_at_10_sym(student[:1], teacher[:1])


def test_asym_needs_equal_widths():
    with pytest.raises(UserError, match="do not match"):
        M.neighbour_recall_at_10_asym(np.ones((5, 3)), np.ones((5, 4)))


def test_metrics_for_and_primary_metric():
    assert M.metrics_for("text-classification") == ["accuracy", "macro_f1"]
    assert "top5" in M.metrics_for("image-classification", num_classes=10)
    assert "top5" not in M.metrics_for("image-classification", num_classes=5)
    assert M.primary_metric("image-classification") == "accuracy"
    assert M.primary_metric("sentence-embedding") == "mean_cosine"
    with pytest.raises(UserError, match="unknown task"):
        M.metrics_for("regression")


def test_compute_classification_with_teacher_and_many_classes():
    labels = np.array([0, 1, 2, 6])
    out = M.compute(
        "image-classification",
        labels,
        _onehot([0, 1, 2, 5], 7),
        teacher_outputs=_onehot([0, 1, 2, 6], 7),
    )
    assert set(out) == {"accuracy", "macro_f1", "top5", "agreement", "accuracy_drop_ci95"}
    assert out["accuracy"] == 0.75 and out["agreement"] == 0.75


def test_accuracy_drop_ci_is_paired():
    labels = np.array([0, 1] * 50)
    teacher = _onehot(list(labels), 2)
    assert M.accuracy_drop_ci(labels, teacher, teacher) == [0.0, 0.0]  # same rows right
    wrong = labels.copy()
    wrong[:10] = 1 - wrong[:10]  # the student misses 10 rows the teacher gets
    d = np.r_[np.ones(10), np.zeros(90)]
    half = 1.96 * d.std(ddof=1) / 10
    lo, hi = M.accuracy_drop_ci(labels, teacher, _onehot(list(wrong), 2))
    assert (lo, hi) == pytest.approx((0.1 - half, 0.1 + half), abs=1e-6)
    assert lo > 0  # 10 of 100 rows lost, none gained: a real drop
    assert M.accuracy_drop_ci(labels[:1], teacher[:1], teacher[:1]) is None  # no spread from 1 row


def test_compute_embeddings_requires_teacher():
    emb = np.random.default_rng(3).normal(size=(12, 4))
    out = M.compute("sentence-embedding", None, emb, teacher_outputs=emb)
    assert set(out) == set(M.EMBEDDING_METRICS)
    with pytest.raises(UserError, match="teacher"):
        M.compute("sentence-embedding", None, emb)
