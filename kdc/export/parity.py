"""Numerical parity of an ONNX model against the PyTorch module it came from."""

from __future__ import annotations

import numpy as np

from kdc.rundir import json_number

JUDGED = {"lowest": np.min, "mean": np.mean}
"""How the cosine floor reads the row cosines: every row (`lowest`; an FP32 export must match
row by row) or their mean (`mean`; an INT8 engine, whose near-uniform logit rows can point
anywhere at a quantisation step's error while its class agrees; a classifier's is then also
held to an argmax-agreement floor, since three logits at cosine 0.99 can still flip classes)."""


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    atol: float,
    rtol: float,
    min_cosine: float,
    judge: str = "lowest",
    min_agreement: float | None = None,
) -> dict:
    """max-abs, 99th-percentile abs error, mean row cosine and argmax agreement; `passed` when
    all elements are within atol + rtol·|ref| or the `judge` row cosine (JUDGED) holds the
    floor and, with `min_agreement` (classifiers), the argmax agrees on that share of rows."""
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    cand = candidate.astype(np.float64).reshape(len(candidate), -1)
    err = np.abs(ref - cand)
    norms = np.linalg.norm(ref, axis=1), np.linalg.norm(cand, axis=1)
    denom = norms[0] * norms[1]
    # a zero row has no direction: it matches only another zero row
    both_zero = (norms[0] == 0) & (norms[1] == 0)
    cos = np.where(both_zero, 1.0, (ref * cand).sum(1) / np.maximum(denom, 1e-30))
    within = bool(np.all(err <= atol + rtol * np.abs(ref)))
    worst = np.argsort(-err.max(1))[:3]
    agreement = float((ref.argmax(1) == cand.argmax(1)).mean()) if ref.size else 1.0
    return {
        "reference": "pytorch",
        "n": int(len(ref)),
        "max_abs": json_number(err.max() if err.size else 0.0),
        "p99_abs": json_number(np.quantile(err, 0.99) if err.size else 0.0),
        "cosine": json_number(cos.mean() if cos.size else 1.0),
        "min_cosine": json_number(cos.min() if cos.size else 1.0),
        "argmax_agreement": agreement,
        "atol": atol,
        "rtol": rtol,
        "cosine_floor": min_cosine,
        "within_tolerance": within,
        "cosine_judged": judge,
        **({"agreement_floor": min_agreement} if min_agreement is not None else {}),
        "passed": within
        or (
            float(JUDGED[judge](cos) if cos.size else 1.0) >= min_cosine
            and (min_agreement is None or agreement >= min_agreement)
        ),
        "worst_rows": [int(i) for i in worst],
    }


def shown(value: float | None, spec: str) -> str:
    """A parity figure formatted with `spec`, or `NaN` where `json_number` left none."""
    return "NaN" if value is None else format(value, spec)
