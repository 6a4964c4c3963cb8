"""`kdc check` on sub-millisecond models: a measured p50 or p99 may move by its absolute floor
(LATENCY_FLOOR_MS) whatever the relative allowance; synthetic records, no timings."""

import copy

import pytest

from kdc.deploy import check
from kdc.deploy.check import compare

LABEL = "onnxruntime-fp32"


def by_metric(results) -> dict:
    return {r.metric: r for r in results}


def timed(report: dict, **fields) -> dict:
    """`report` with its onnxruntime-fp32 engine's measured latency set to `fields`."""
    out = copy.deepcopy(report)
    lat = next(e for e in out["engines"] if f"{e['engine']}-{e['precision']}" == LABEL)["latency"]
    lat.update(fields, iterations=39724)
    return out


# the digits example's 0.012 ms CNN, as two runs on one shared machine recorded it (report.json)
DIGITS = {
    "p50_ms": 0.011958,
    "p99_ms": 0.018237,
    "cv": 9.2457,
    "rounds_p50_ms": [0.0119, 0.012, 0.012],
    "rounds_p99_ms": [0.0278, 0.0182, 0.0145],
}
RERUN = {  # the same engine again: p50 steady, the tail twice as far out
    "p50_ms": 0.012198,
    "p99_ms": 0.0347366,
    "cv": 10.8775,
    "rounds_p50_ms": [0.0122, 0.0122, 0.0122],
    "rounds_p99_ms": [0.0343, 0.0319, 0.0347],
}


def test_a_rerun_of_a_sub_millisecond_model_is_not_a_p99_regression(baseline):
    """Its p99 rose 90 %, past the 50 % noise cap: a regression before the floor; +0.017 ms is
    within the p99's 0.05 ms floor, and the line says why it was not judged significant."""
    base, cur = timed(baseline, **DIGITS), timed(baseline, **RERUN)
    results = by_metric(compare(cur, base))
    p99 = results[f"{LABEL}.latency_p99_ms"]
    assert p99.status == "pass" and not p99.failed, p99.message
    assert "capped at 50%" in p99.message and "or +0.05 ms (the p99 floor)" in p99.message
    assert "+0.0165 ms is within the p99 floor of 0.05 ms: not significant" in p99.message
    assert p99.limit == pytest.approx(DIGITS["p99_ms"] + 0.05)
    assert results[f"{LABEL}.latency_p50_ms"].status == "pass"
    # --strict allows the tolerance alone: no noise allowance, no floor
    strict = by_metric(compare(cur, base, strict=True))[f"{LABEL}.latency_p99_ms"]
    assert strict.status == "regression" and "floor" not in strict.message
    # a speed-up within the floor is no improvement either
    faster = by_metric(compare(base, cur))[f"{LABEL}.latency_p99_ms"]
    assert faster.status == "pass" and "-0.0165 ms is within the p99 floor" in faster.message


@pytest.mark.parametrize("p50", [0.012, 0.02])
def test_a_sub_millisecond_model_twice_as_slow_is_a_regression(baseline, p50):
    """Steady rounds, every figure doubled: the p50 moved past its 0.005 ms floor; the p99,
    +0.018 ms at most, is within its own."""
    steady = {"p50_ms": p50, "p99_ms": p50 * 1.5, "cv": 0.4}
    base = timed(baseline, **steady, rounds_p50_ms=[p50, p50 * 1.01, p50 * 1.02])
    slow = {k: v * 2 for k, v in steady.items() if k != "cv"}
    cur = timed(baseline, **steady | slow, rounds_p50_ms=[2 * p50, 2.02 * p50, 2.04 * p50])
    results = by_metric(compare(cur, base))
    p50r = results[f"{LABEL}.latency_p50_ms"]
    assert p50r.status == "regression" and p50r.failed, p50r.message
    assert "or +0.005 ms (the p50 floor), whichever is more" in p50r.message
    assert results[f"{LABEL}.latency_p99_ms"].status == "pass"


@pytest.mark.parametrize("factor", [0.5, 0.85, 1.05, 1.15, 1.3, 1.6, 2.0, 3.0])
def test_models_past_the_floor_are_judged_as_before(baseline, monkeypatch, factor):
    """The sample report's models (3 ms and up): every line, status and limit is what it was
    with no floor at all."""
    cur = copy.deepcopy(baseline)
    for e in cur["engines"]:
        for key in ("latency", "target_latency"):
            lat = e.get(key) or {}
            for stat in ("p50_ms", "p99_ms"):
                if stat in lat:
                    lat[stat] *= factor
    with_floor = compare(cur, baseline)
    monkeypatch.setattr(check, "LATENCY_FLOOR_MS", {"p50": 0.0, "p99": 0.0})
    assert compare(cur, baseline) == with_floor
    assert not any("floor" in r.message for r in with_floor)
