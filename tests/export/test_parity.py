"""The parity verdict: element tolerance, else a cosine floor on the lowest or the mean row."""

import numpy as np

from kdc.export.parity import compare


def test_an_int8_engine_is_judged_on_its_mean_row_cosine_an_export_on_every_row():
    """A near-uniform logit row flips direction at a quantisation step's error while its class
    agrees: the lowest row cosine fails it, the mean over rows does not."""
    ref = np.array([[4.0, -1.0, -3.0], [0.02, -0.01, -0.01], [-2.0, 3.0, -1.0]] * 10)
    cand = ref.copy()
    cand[1::3] = [0.03, -0.02, 0.01]  # same class, cosine about 0.8
    cand[::3] += 0.05
    every_row = compare(ref, cand, atol=1e-4, rtol=1e-3, min_cosine=0.9)
    mean_row = compare(ref, cand, atol=1e-4, rtol=1e-3, min_cosine=0.9, judge="mean")
    assert every_row["min_cosine"] < 0.9 < every_row["cosine"]
    assert not every_row["passed"] and every_row["cosine_judged"] == "lowest"
    assert mean_row["passed"] and mean_row["cosine_judged"] == "mean"
    assert mean_row["argmax_agreement"] == 1.0
    broken = compare(ref, -ref, atol=1e-4, rtol=1e-3, min_cosine=0.9, judge="mean")
    assert not broken["passed"]


def test_a_classifier_int8_engine_also_needs_its_classes_to_agree():
    """Three close logits keep a cosine of 0.99 while the class flips: a classifier's INT8
    parity also holds the argmax to an agreement floor."""
    ref = np.array([[1.00, 0.98, 0.96], [0.50, 0.49, 0.47]] * 10)
    cand = ref[:, [1, 0, 2]]  # classes 0 and 1 swapped, cosine > 0.999
    loose = compare(ref, cand, atol=1e-4, rtol=1e-3, min_cosine=0.9, judge="mean")
    strict = compare(
        ref, cand, atol=1e-4, rtol=1e-3, min_cosine=0.9, judge="mean", min_agreement=0.9
    )
    assert loose["cosine"] > 0.999 and strict["argmax_agreement"] == 0.0
    assert loose["passed"] and not strict["passed"] and strict["agreement_floor"] == 0.9
    same = compare(
        ref, ref + 0.2, atol=1e-4, rtol=1e-3, min_cosine=0.9, judge="mean", min_agreement=0.9
    )
    assert same["passed"]


def test_an_all_zero_output_row_is_not_parity_with_a_non_zero_one():
    """A row of zeros has no direction: against a non-zero reference row its cosine is 0 (a
    broken engine that outputs zeros fails), and only two zero rows agree (cosine 1)."""
    ref = np.array([[3.0, -1.0, 2.0], [0.0, 0.0, 0.0]])
    zeros = np.zeros_like(ref)
    got = compare(ref, zeros, atol=1e-4, rtol=1e-3, min_cosine=0.9, judge="mean")
    assert got["min_cosine"] == 0.0 and got["cosine"] == 0.5
    assert not got["passed"]
    assert compare(zeros, zeros, atol=1e-4, rtol=1e-3, min_cosine=0.9)["cosine"] == 1.0


def test_outputs_holding_nan_fail_and_leave_no_nan_in_the_record():
    """An engine whose outputs overflow (NaN): its parity fails, and the record keeps no NaN,
    which json.dumps writes as a bare NaN token that strict JSON readers (jq, CI) refuse."""
    import json

    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    got = compare(ref, np.full_like(ref, np.nan), atol=1e-4, rtol=1e-3, min_cosine=0.9)
    assert not got["passed"]
    assert got["max_abs"] is None and got["cosine"] is None and got["min_cosine"] is None
    json.dumps(got, allow_nan=False)
