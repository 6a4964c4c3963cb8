"""`kdc check`'s comparison of a report with its baseline: tolerances against measured noise, what
is comparable, constraints (test_check_cli.py: its files and command line)."""

import copy
import math

import pytest

from kdc.deploy.check import (
    compare,
    constraint_results,
    format_line,
)
from kdc.errors import UserError


def engine(report: dict, label: str) -> dict:
    return next(e for e in report["engines"] if f"{e['engine']}-{e['precision']}" == label)


def by_metric(results) -> dict:
    return {r.metric: r for r in results}


def test_identical_reports_pass(baseline):
    results = compare(copy.deepcopy(baseline), baseline)
    assert results and all(r.status == "pass" for r in results)
    assert not any(r.failed for r in results)
    metrics = by_metric(results)
    assert "onnxruntime-int8.latency_p99_ms" in metrics
    assert "onnxruntime-int8.target_latency_p50_ms" in metrics
    assert "tensorrt-fp16.latency_p50_ms" in metrics
    assert "onnxruntime-fp32.accuracy" in metrics


def test_slowdown_beyond_tolerance_and_noise_is_a_regression(baseline):
    current = copy.deepcopy(baseline)
    lat = engine(current, "onnxruntime-fp32")["latency"]  # cv 2.2%, 500 iterations
    lat["p99_ms"] *= 1.20
    r = by_metric(compare(current, baseline))["onnxruntime-fp32.latency_p99_ms"]
    assert r.status == "regression" and r.failed
    se = 3.7336 * 0.022 / 500**0.5  # standard error of p99 (normal approximation), relative
    assert r.noise == pytest.approx(2 * (2 * se**2) ** 0.5, rel=1e-3)
    assert r.limit == pytest.approx(6.3 * 1.10)
    assert "s.e. of the p99" in r.message and "noisy" not in r.message


def test_single_round_p99_allows_for_its_own_uncertainty(baseline):
    """trtexec results are one round: p99's standard error is 3x the median's, so a 12 % p99
    slowdown with a noisy device (cv 20 %, 200 runs) is within noise, a 12 % p50 one is not."""
    from kdc.deploy.check_noise import quantile_se_factor

    assert quantile_se_factor(0.5) == pytest.approx((math.pi / 2) ** 0.5)
    assert quantile_se_factor(0.99) == pytest.approx(3.7336, rel=1e-4)
    current = copy.deepcopy(baseline)
    for report in (baseline, current):
        set_latency(report, "onnxruntime-fp32", cv=0.2, iterations=200)
    lat = engine(current, "onnxruntime-fp32")["latency"]
    lat["p50_ms"], lat["p99_ms"] = lat["p50_ms"] * 1.12, lat["p99_ms"] * 1.12
    results = by_metric(compare(current, baseline))
    p50, p99 = (results[f"onnxruntime-fp32.latency_{s}_ms"] for s in ("p50", "p99"))
    assert p50.status == "regression" and "s.e. of the median" in p50.message
    assert p99.status == "warn" and p99.noise == pytest.approx(
        2 * 2**0.5 * 3.7336 * 0.2 / 200**0.5, rel=1e-3
    )


def test_slowdown_within_noise_passes(baseline):
    current = copy.deepcopy(baseline)
    for report, rounds in ((baseline, [3.0, 3.1, 3.4]), (current, [3.6, 3.72, 4.1])):
        engine(report, "onnxruntime-int8")["latency"]["rounds_p50_ms"] = rounds  # spread ~13%
    engine(current, "onnxruntime-int8")["latency"]["p99_ms"] *= 1.20  # beyond 10 % tolerance
    r = by_metric(compare(current, baseline))["onnxruntime-int8.latency_p99_ms"]
    assert r.status == "warn" and not r.failed  # passes, flagged in the log and the JUnit file
    assert format_line(r).startswith("WARN ")
    assert r.noise == pytest.approx(2 * ((0.4 / 3.1) ** 2 + (0.5 / 3.72) ** 2) ** 0.5)
    assert (
        "p50 spread over rounds" in r.message and "noisy (cv 4.1% baseline, 4.1% now)" in r.message
    )
    assert "slower than the tolerance, passed on the noise" in r.message  # a pass to look at
    # --strict: the stated tolerance is the limit, whatever the noise
    r = by_metric(compare(current, baseline, strict=True))["onnxruntime-int8.latency_p99_ms"]
    assert r.status == "regression" and r.noise is None
    assert "allowed +10.0% = the tolerance (--strict: no noise allowance)" in r.message


def test_predicted_latency_has_no_noise(baseline):
    current = copy.deepcopy(baseline)
    engine(current, "tensorrt-int8")["latency"]["p50_ms"] *= 1.15
    engine(current, "tensorrt-fp16")["latency"]["p50_ms"] *= 0.5
    results = by_metric(compare(current, baseline))
    assert results["tensorrt-int8.latency_p50_ms"].status == "regression"
    assert results["tensorrt-int8.latency_p50_ms"].noise == 0
    assert results["tensorrt-fp16.latency_p50_ms"].status == "improved"


def set_latency(report: dict, label: str, **fields) -> dict:
    lat = engine(report, label)["latency"]
    lat.update(fields)
    return lat


def test_five_times_slower_p50_with_outlier_cv_is_a_regression(baseline):
    """A few slow outliers make the per-sample cv huge; the median's uncertainty stays small."""
    current = copy.deepcopy(baseline)
    for report in (baseline, current):
        set_latency(report, "onnxruntime-int8", cv=3.5)  # 500 iterations
    lat = engine(current, "onnxruntime-int8")["latency"]
    lat["p50_ms"] *= 5
    results = by_metric(compare(current, baseline))
    r = results["onnxruntime-int8.latency_p50_ms"]
    assert r.status == "regression" and r.failed
    assert r.noise == pytest.approx(2 * 2**0.5 * 1.2533 * 3.5 / 500**0.5, rel=1e-3)  # ~55%
    assert "noisy (cv 350.0% baseline, 350.0% now)" in r.message
    assert results["onnxruntime-int8.latency_p99_ms"].status == "pass"  # p99 unchanged


def test_forty_percent_slower_with_two_percent_rounds_spread_is_a_regression(baseline):
    current = copy.deepcopy(baseline)
    set_latency(baseline, "onnxruntime-fp32", cv=0.16, rounds_p50_ms=[5.15, 5.2, 5.25])
    lat = set_latency(current, "onnxruntime-fp32", cv=0.16, rounds_p50_ms=[7.2, 7.3, 7.35])
    lat["p50_ms"], lat["p99_ms"] = 5.2 * 1.4, 6.3 * 1.4
    results = by_metric(compare(current, baseline))
    for stat in ("p50", "p99"):
        r = results[f"onnxruntime-fp32.latency_{stat}_ms"]
        assert r.status == "regression" and r.failed, r.message
        assert r.noise < 0.06 and "p50 spread over rounds" in r.message


def test_noise_allowance_is_capped_so_one_disturbed_round_cannot_pass_a_3x_slowdown(baseline):
    current = copy.deepcopy(baseline)
    set_latency(baseline, "onnxruntime-fp32", rounds_p50_ms=[5.2, 5.3, 5.25])
    lat = set_latency(current, "onnxruntime-fp32", rounds_p50_ms=[15.6, 15.5, 80.0])
    lat["p50_ms"] = 5.2 * 3
    r = by_metric(compare(current, baseline))["onnxruntime-fp32.latency_p50_ms"]
    assert r.noise > 5 and r.status == "regression" and r.failed, r.message
    assert "capped at 50%" in r.message and "allowed +50.0%" in r.message
    lat["p50_ms"] = 5.2 * 1.4  # within the capped allowance: passes, flagged
    r = by_metric(compare(current, baseline))["onnxruntime-fp32.latency_p50_ms"]
    assert r.status == "warn" and not r.failed
    lat["p50_ms"] = 5.2 * 0.45  # a speed-up within the (uncapped) noise is no improvement
    r = by_metric(compare(current, baseline))["onnxruntime-fp32.latency_p50_ms"]
    assert r.status == "pass"


def test_noise_without_iterations_falls_back_to_cv_and_says_so(baseline):
    current = copy.deepcopy(baseline)
    for report in (baseline, current):
        set_latency(report, "onnxruntime-fp32", cv=0.10).pop("iterations")
    engine(current, "onnxruntime-fp32")["latency"]["p99_ms"] *= 1.2
    r = by_metric(compare(current, baseline))["onnxruntime-fp32.latency_p99_ms"]
    assert r.status == "warn" and r.noise == pytest.approx(2 * 2**0.5 * 0.10)
    assert "per-sample cv: iterations not recorded" in r.message


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"device": "Intel Xeon (2 threads)"}, "device 'AMD EPYC"),
        ({"threads": 4}, "threads 2 vs 4"),
        ({"batch": 8}, "batch 1 vs 8"),
        ({"input_shape": {"input_ids": [1, 64]}}, "input_shape {"),
    ],
)
def test_measurement_under_other_conditions_is_not_comparable(baseline, fields, said):
    current = copy.deepcopy(baseline)
    set_latency(current, "onnxruntime-int8", **fields)
    results = by_metric(compare(current, baseline))
    r = results["onnxruntime-int8.latency_p50_ms"]
    assert r.status == "missing" and r.failed and r.limit is None
    assert r.message.startswith("not comparable: ") and said in r.message
    assert "--update-baseline" in r.message
    assert results["onnxruntime-int8.target_latency_p50_ms"].status == "pass"


DEVICE_TIMING = {
    "kind": "measured",
    "device": "NVIDIA Jetson Orin Nano Developer Kit",
    "engine": "tensorrt",
    "batch": 1,
    "input_shape": {"input_ids": [1, 128]},
    "p50_ms": 0.53,
    "p99_ms": 0.61,
    "cv": 0.01,
    "iterations": 2000,
    "on_target": True,
}


@pytest.mark.parametrize(
    ("versions", "compared"),
    [
        (("10.3.0", "10.7.0"), False),
        (("10.3.0", "10.3.0"), True),
        ((None, "10.7.0"), True),  # a baseline from before kdc recorded it
        (("unknown", "10.7.0"), True),  # trtexec's banner was not read
    ],
)
def test_device_timings_of_other_tensorrt_versions_are_not_comparable(baseline, versions, compared):
    """An engine is built for one TensorRT version: its timings under another are not compared
    (where both reports record the version), as those of another target are not."""
    current = copy.deepcopy(baseline)
    for report, version in zip((baseline, current), versions, strict=True):
        lat = {**DEVICE_TIMING, **({"tensorrt": version} if version else {})}
        engine(report, "tensorrt-int8")["latency"] = lat
    results = by_metric(compare(current, baseline))
    if compared:
        assert results["tensorrt-int8.latency_p50_ms"].status == "pass"
        assert results["tensorrt-int8.latency_p99_ms"].status == "pass"
        return
    r = results["tensorrt-int8.latency_p50_ms"]
    assert r.status == "missing" and r.failed
    assert r.message == (
        "not comparable: tensorrt '10.3.0' vs '10.7.0'; re-baseline with `kdc check "
        "--update-baseline`"
    )
    assert results["onnxruntime-int8.latency_p50_ms"].status == "pass"  # timed here: compared


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda lat, r: lat.update(model="roofline-v2"), "model 'roofline-v1' vs 'roofline-v2'"),
        (lambda lat, r: lat.update(calibrated_from="x" * 200), "calibrated_from "),
        (lambda lat, r: lat.update(predictor_sha256="0" * 64), "predictor_sha256 "),
        (lambda lat, r: lat.update(padding=0.6), "padding "),
    ],
)
def test_prediction_made_otherwise_is_not_comparable(baseline, edit, said):
    """A recalibrated or edited latency model moves predictions of the same student."""
    current = copy.deepcopy(baseline)
    lat = engine(current, "tensorrt-int8")["latency"]
    assert lat["kind"] == "predicted"
    edit(lat, current)
    lat["p50_ms"] *= 0.5
    results = by_metric(compare(current, baseline))
    r = results["tensorrt-int8.latency_p50_ms"]
    assert r.status == "missing" and r.failed and said in r.message and len(r.message) < 300
    assert results["onnxruntime-int8.latency_p50_ms"].status == "pass"  # measured: compared


def test_accuracy_from_another_engine_is_not_comparable(baseline):
    current = copy.deepcopy(baseline)
    engine(current, "onnxruntime-int8")["accuracy"]["engine"] = "onnxruntime-cpu-qdq-simulated"
    r = by_metric(compare(current, baseline))["onnxruntime-int8.accuracy"]
    assert r.status == "missing" and r.failed
    assert "'onnxruntime-cpu-int8' vs 'onnxruntime-cpu-qdq-simulated'" in r.message


def test_another_target_is_not_comparable_and_says_nothing_was_compared(baseline):
    current = copy.deepcopy(baseline)
    current["target"]["name"] = "host"
    results = compare(current, baseline)
    assert results and all(r.status == "missing" and r.failed for r in results)
    assert all("target 'jetson-orin-nano-8gb' vs 'host'" in r.message for r in results[:-1])
    assert results[0].message.endswith("; compare with a baseline made for host")  # not re-base
    assert results[-1].metric == "latency" and "nothing compared" in results[-1].message


DIGITS = [str(i) for i in range(10)]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (
            lambda r: r.update(data={"labels": ["cat", "dog", "fish"]}),
            "data.labels 10 vs 3 classes (['0', '1', ",
        ),
        (lambda r: r["data"]["labels"].__setitem__(9, "nine"), "(['9'] vs ['nine'])"),
        (lambda r: r.update(task="image-classification"), "task 'text-classification' vs 'image"),
    ],
)
def test_another_models_report_is_not_comparable(baseline, edit, said):
    """A baseline of another task or other classes fails every metric as `missing`, like a
    baseline of another target: a 0.99 -> 0.11 accuracy is not a regression of this model."""
    baseline["data"] = {"labels": DIGITS}
    current = copy.deepcopy(baseline)
    edit(current)
    engine(current, "onnxruntime-fp32")["accuracy"]["value"] = 0.1111
    results = compare(current, baseline)
    assert results and all(r.status == "missing" and r.failed for r in results)
    assert all(said in r.message and "--update-baseline" in r.message for r in results[:-1])
    assert results[-1].metric == "latency" and "nothing compared" in results[-1].message


def test_renamed_run_with_reordered_labels_and_another_config_still_compares(baseline):
    baseline["data"] = {"labels": DIGITS}
    current = copy.deepcopy(baseline)
    current["run"].update(name="digits-v2", config_sha256="0" * 64)
    current["data"]["labels"] = DIGITS[::-1]  # another teacher's class order
    engine(current, "onnxruntime-fp32")["accuracy"]["value"] -= 0.02
    results = by_metric(compare(current, baseline))
    assert results["onnxruntime-fp32.accuracy"].status == "regression"
    assert results["onnxruntime-int8.accuracy"].status == "pass"
    current["data"] = None  # labels recorded by one report only: compared
    assert by_metric(compare(current, baseline))["onnxruntime-int8.accuracy"].status == "pass"


@pytest.mark.parametrize(
    ("delta", "status"),
    [(-0.006, "regression"), (-0.004, "pass"), (-0.005, "pass"), (0.01, "improved")],
)
def test_accuracy_change_against_half_point_tolerance(baseline, delta, status):
    current = copy.deepcopy(baseline)
    engine(current, "onnxruntime-int8")["accuracy"]["value"] += delta
    r = by_metric(compare(current, baseline))["onnxruntime-int8.accuracy"]
    assert r.status == status


def test_kind_mismatch_is_reported_not_compared(baseline):
    current = copy.deepcopy(baseline)
    engine(current, "tensorrt-int8")["latency"] = {
        "kind": "measured",
        "device": "Orin Nano",
        "p50_ms": 5.0,
        "p99_ms": 9.0,
        "cv": 0.01,
    }
    r = by_metric(compare(current, baseline))["tensorrt-int8.latency_p50_ms"]
    assert r.status == "missing" and r.failed
    assert "kind changed" in r.message and r.limit is None


def test_a_device_timed_engine_is_compared_on_the_prediction_it_keeps(baseline):
    """With the device's results a TensorRT engine's `latency` is measured and the search's
    prediction stays as `predicted_latency`: with --latency-kind predicted (CI's CPU runner)
    the predictions are compared; by default a device timing on one side only fails (it went
    missing, or the baseline has none), it is not passed on the predictions."""
    device = copy.deepcopy(baseline)
    trt = engine(device, "tensorrt-int8")
    trt["predicted_latency"] = copy.deepcopy(trt["latency"])
    trt["latency"] = {"kind": "measured", "device": "Orin Nano", "p50_ms": 5.0, "p99_ms": 9.0}
    for current, base in ((baseline, device), (device, baseline), (device, device)):
        results = by_metric(compare(current, base, latency_kinds=("predicted",)))
        r = results["tensorrt-int8.latency_p50_ms"]
        assert r.status == "pass" and r.baseline == r.current, r
        assert "ms predicted (+0.0%)" in r.message
    for current, base in ((baseline, device), (device, baseline)):
        r = by_metric(compare(current, base))["tensorrt-int8.latency_p50_ms"]
        assert r.status == "missing" and r.failed and "latency kind changed" in r.message


def test_engine_removed_fails_and_engine_added_does_not(baseline):
    current = copy.deepcopy(baseline)
    removed = current["engines"].pop(1)  # onnxruntime-fp32
    added = {**copy.deepcopy(removed), "precision": "fp16"}
    current["engines"].append(added)
    results = compare(current, baseline)
    gone = [r for r in results if r.metric.startswith("onnxruntime-fp32.")]
    new = [r for r in results if r.metric.startswith("onnxruntime-fp16.")]
    assert gone and all(r.status == "missing" and r.failed for r in gone)
    assert new and all(r.status == "missing" and not r.failed for r in new)


def test_latency_kinds_limits_comparisons_to_predictions(baseline):
    current = copy.deepcopy(baseline)
    engine(current, "onnxruntime-int8")["latency"]["p99_ms"] *= 3
    results = compare(current, baseline, latency_kinds=("predicted",))
    assert not any("latency_p99" in r.metric for r in results)
    assert not any(r.failed for r in results)


def test_duplicate_engines_are_a_user_error(baseline):
    current = copy.deepcopy(baseline)
    current["engines"].append(copy.deepcopy(current["engines"][0]))
    with pytest.raises(UserError, match="two engines are onnxruntime-int8"):
        compare(current, baseline)


def test_format_line_is_one_line_with_status_and_metric(baseline):
    current = copy.deepcopy(baseline)
    engine(current, "onnxruntime-int8")["accuracy"]["value"] -= 0.02
    r = by_metric(compare(current, baseline))["onnxruntime-int8.accuracy"]
    line = format_line(r)
    assert "\n" not in line
    assert line.startswith("REGRESSION") and "onnxruntime-int8.accuracy" in line
    assert "-2.00 pt" in line


def test_constraint_rows_become_results_and_a_missing_value_fails(baseline):
    rows = baseline["constraints"] + [
        {
            "name": "size_mb",
            "limit": 5.0,
            "value": None,
            "source": None,
            "pass": False,
            "engine": None,
            "reason": "no built engine of precision fp16",
        }
    ]
    results = constraint_results({**baseline, "constraints": rows})
    assert len(results) == len(rows)
    assert [r.metric for r in results if r.failed] == ["constraint.size_mb"]
    assert "no built engine" in results[-1].message


def test_p99_uses_its_own_spread_over_rounds():
    """A p99 that varies 30 % between rounds is not gated at the p50's 2 % spread."""
    from kdc.deploy.check_noise import latency_noise

    base = {"kind": "measured", "rounds_p50_ms": [10.0, 10.1, 10.2], "rounds_p99_ms": [12, 15, 14]}
    cur = {**base}
    p50, how50 = latency_noise(base, cur, "p50")
    p99, how99 = latency_noise(base, cur, "p99")
    assert p50 < 0.06 and "p50 spread" in how50
    assert p99 > 0.5 and "p99 spread" in how99
    old = {k: v for k, v in base.items() if k != "rounds_p99_ms"}  # an older report
    assert latency_noise(old, cur, "p99") == (p50, how50)


def test_a_baseline_constraint_the_report_lacks_fails(baseline):
    """The device's parity, say, once the device results are gone: MISSING, not silence."""
    from kdc.deploy.check import constraint_results

    base = copy.deepcopy(baseline)
    base["constraints"] = [
        *(base.get("constraints") or []),
        {
            "name": "device_parity",
            "limit": 0.99,
            "value": 0.9999,
            "pass": True,
            "limit_from": "bundle",
        },
    ]
    (r,) = [x for x in constraint_results(baseline, base) if x.metric == "constraint.device_parity"]
    assert r.status == "missing" and r.failed and r.message == "missing from this report"
    predicted_only = constraint_results(baseline, base, ("predicted",))  # a CPU runner's check
    assert not any(x.metric == "constraint.device_parity" for x in predicted_only)
    assert not any(x.status == "missing" for x in constraint_results(base, base))


def test_a_kind_the_baseline_has_none_of_fails_instead_of_passing_unchecked(baseline):
    """--latency-kind predicted against a host run's baseline (measured only): nothing would
    be compared and the gate would pass; it fails, naming the kind the baseline has."""
    host = copy.deepcopy(baseline)
    for e in host["engines"]:
        for key in ("latency", "target_latency"):
            if (e.get(key) or {}).get("kind") == "predicted":
                del e[key]
    r = by_metric(compare(host, host, latency_kinds=("predicted",)))["latency"]
    assert r.failed and r.message == (
        "nothing compared: the baseline has no predicted latency figures (it has measured "
        "ones: --latency-kind measured or all)"
    )

    empty = {**host, "engines": []}  # no latency at all: nothing to gate on, nothing failed
    assert not any(r.metric == "latency" for r in compare(empty, empty))


def test_memory_and_size_growth_past_the_tolerance_are_regressions(baseline):
    """Two reports that differ only in memory or model size (e.g. a larger build.max_batch)
    used to pass every line."""
    current = copy.deepcopy(baseline)
    mem = engine(current, "onnxruntime-int8")["memory"]  # engine_mb 35.2 of peak_rss_mb 96.4
    mem.update(engine_mb=35.2 * 1.15, peak_rss_mb=96.4 + 35.2 * 0.15)
    engine(current, "onnxruntime-fp32")["size_mb"] = 22.4 * 1.05
    engine(current, "tensorrt-fp16")["memory"]["peak_mb"] = 52.5 * 0.5
    results = by_metric(compare(current, baseline))
    grown = results["onnxruntime-int8.memory_mb"]  # the engine's own growth, not diluted
    assert grown.status == "regression" and grown.failed
    assert grown.message.startswith("35.2 -> 40.48 MiB measured engine_mb")
    assert "(+15.0%)" in grown.message
    assert results["onnxruntime-fp32.size_mb"].status == "pass"  # +5 %, within 10 %
    assert results["tensorrt-fp16.memory_mb"].status == "improved"
    assert results["tensorrt-int8.memory_mb"].status == "pass"
    tight = by_metric(compare(current, baseline, memory_tolerance=0.02))
    assert tight["onnxruntime-fp32.size_mb"].status == "regression"
    assert "MB model file" in tight["onnxruntime-fp32.size_mb"].message
    tiny, tinier = copy.deepcopy(baseline), copy.deepcopy(baseline)  # +3 KB of a 25 KB peak
    engine(tiny, "tensorrt-int8")["memory"]["peak_mb"] = 0.025
    engine(tinier, "tensorrt-int8")["memory"]["peak_mb"] = 0.028
    small = by_metric(compare(tinier, tiny))["tensorrt-int8.memory_mb"]
    assert small.status == "pass" and "or +1 MiB, whichever is more" in small.message


@pytest.mark.parametrize(
    "edit, said",
    [
        (lambda m: m.update(batch=8), "not comparable: batch None vs 8"),
        (lambda m: m.update(kind="measured", peak_rss_mb=900.0), "memory kind changed"),
        (
            lambda m: m.update(model="weights+activations-v2"),
            "not comparable: model 'weights+activations-v1' vs 'weights+activations-v2'",
        ),
    ],
)
def test_memory_of_another_batch_or_kind_is_not_compared(baseline, edit, said):
    current = copy.deepcopy(baseline)
    edit(engine(current, "tensorrt-int8")["memory"])
    r = by_metric(compare(current, baseline))["tensorrt-int8.memory_mb"]
    assert r.status == "missing" and r.failed and said in r.message


def test_a_predicted_memory_of_a_report_naming_no_model_is_still_compared(baseline):
    """Reports from before predicted memory named its model compare with those that do."""
    older = copy.deepcopy(baseline)
    del engine(older, "tensorrt-int8")["memory"]["model"]
    assert by_metric(compare(baseline, older))["tensorrt-int8.memory_mb"].status == "pass"


def test_memory_new_in_a_report_passes_and_memory_gone_fails(baseline):
    old = copy.deepcopy(baseline)
    del engine(old, "tensorrt-int8")["memory"]  # a baseline from before it was recorded
    assert not by_metric(compare(baseline, old))["tensorrt-int8.memory_mb"].failed
    gone = by_metric(compare(old, baseline))["tensorrt-int8.memory_mb"]
    assert gone.failed and "missing from this report" in gone.message


def test_measured_memory_under_other_conditions_is_not_compared(baseline):
    """A peak RSS taken at another batch or thread count is not a regression; conditions are
    compared where both reports record them (earlier reports record none)."""
    base, current = copy.deepcopy(baseline), copy.deepcopy(baseline)
    engine(base, "onnxruntime-int8")["memory"].update(batch=1, threads=2, device="Xeon")
    mem = engine(current, "onnxruntime-int8")["memory"]
    mem.update(batch=32, threads=2, device="Xeon", engine_mb=mem["engine_mb"] * 1.5)
    r = by_metric(compare(current, base))["onnxruntime-int8.memory_mb"]
    assert r.status == "missing" and r.failed and "batch 1 vs 32" in r.message
    old = by_metric(compare(current, baseline))["onnxruntime-int8.memory_mb"]  # none recorded
    assert old.status == "regression"
    for key in ("peak_rss_mb", "engine_mb"):
        del engine(base, "onnxruntime-int8")["memory"][key]
    gone = by_metric(compare(current, base))["onnxruntime-int8.memory_mb"]
    assert "the baseline's measured memory has no peak_rss_mb" in gone.message


def test_a_host_device_of_one_thread_compares_with_its_older_spelling(baseline):
    """kdc once wrote "(1 threads)"; a baseline of that spelling is the same device."""
    current = copy.deepcopy(baseline)
    set_latency(baseline, "onnxruntime-int8", device="Intel Xeon (1 threads)", threads=1)
    set_latency(current, "onnxruntime-int8", device="Intel Xeon (1 thread)", threads=1)
    assert by_metric(compare(current, baseline))["onnxruntime-int8.latency_p50_ms"].status == "pass"
    set_latency(current, "onnxruntime-int8", device="AMD EPYC (1 thread)")
    r = by_metric(compare(current, baseline))["onnxruntime-int8.latency_p50_ms"]
    assert r.status == "missing" and "device 'Intel Xeon (1 threads)' vs 'AMD EPYC" in r.message


def test_this_cpus_int8_accuracy_is_compared_on_the_same_cpu_only(baseline):
    """A non-host run's INT8 engine records its real int8-kernel accuracy beside the stand-in;
    a drop in it was not gated. Another CPU's kernels (VNNI or not) are not compared."""
    base = copy.deepcopy(baseline)
    acc = {"metric": "accuracy", "value": 0.95, "engine": "onnxruntime-cpu-int8"}
    engine(base, "onnxruntime-int8")["accuracy_this_cpu"] = acc
    current = copy.deepcopy(base)
    engine(current, "onnxruntime-int8")["accuracy_this_cpu"]["value"] = 0.90
    r = by_metric(compare(current, base))["onnxruntime-int8.accuracy_this_cpu"]
    assert r.status == "regression" and r.failed
    engine(current, "onnxruntime-int8")["latency"]["device"] = "Intel Xeon (2 threads)"
    assert "onnxruntime-int8.accuracy_this_cpu" not in by_metric(compare(current, base))
