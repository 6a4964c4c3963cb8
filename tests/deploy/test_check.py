import copy
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kdc.deploy.check import (
    compare,
    constraint_results,
    format_line,
    load_report,
    parse_tolerance,
    update_baseline,
    write_junit,
)
from kdc.errors import UserError

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"


@pytest.fixture
def baseline() -> dict:
    return json.loads(SAMPLE.read_text())


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
    from kdc.deploy.check import quantile_se_factor

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
    assert p99.status == "pass" and p99.noise == pytest.approx(
        2 * 2**0.5 * 3.7336 * 0.2 / 200**0.5, rel=1e-3
    )


def test_slowdown_within_noise_passes(baseline):
    current = copy.deepcopy(baseline)
    for report, rounds in ((baseline, [3.0, 3.1, 3.4]), (current, [3.6, 3.72, 4.1])):
        engine(report, "onnxruntime-int8")["latency"]["rounds_p50_ms"] = rounds  # spread ~13%
    engine(current, "onnxruntime-int8")["latency"]["p99_ms"] *= 1.20  # beyond 10 % tolerance
    r = by_metric(compare(current, baseline))["onnxruntime-int8.latency_p99_ms"]
    assert r.status == "pass" and not r.failed
    assert r.noise == pytest.approx(2 * ((0.4 / 3.1) ** 2 + (0.5 / 3.72) ** 2) ** 0.5)
    assert (
        "p50 spread over rounds" in r.message and "noisy (cv 4.1% baseline, 4.1% now)" in r.message
    )
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


def test_noise_without_iterations_falls_back_to_cv_and_says_so(baseline):
    current = copy.deepcopy(baseline)
    for report in (baseline, current):
        set_latency(report, "onnxruntime-fp32", cv=0.10).pop("iterations")
    engine(current, "onnxruntime-fp32")["latency"]["p99_ms"] *= 1.2
    r = by_metric(compare(current, baseline))["onnxruntime-fp32.latency_p99_ms"]
    assert r.status == "pass" and r.noise == pytest.approx(2 * 2**0.5 * 0.10)
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
    r = results["onnxruntime-int8.latency"]
    assert r.status == "missing" and r.failed and r.limit is None
    assert r.message.startswith("not comparable: ") and said in r.message
    assert "--update-baseline" in r.message
    assert "onnxruntime-int8.latency_p50_ms" not in results  # numbers not compared
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
        assert "tensorrt-int8.latency" not in results
        return
    r = results["tensorrt-int8.latency"]
    assert r.status == "missing" and r.failed
    assert r.message == (
        "not comparable: tensorrt '10.3.0' vs '10.7.0'; re-baseline with `kdc check "
        "--update-baseline`"
    )
    assert "tensorrt-int8.latency_p50_ms" not in results  # numbers not compared
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
    r = results["tensorrt-int8.latency"]
    assert r.status == "missing" and r.failed and said in r.message and len(r.message) < 300
    assert "tensorrt-int8.latency_p50_ms" not in results
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


def test_cli_baseline_of_another_model_exits_1_without_a_regression(baseline, tmp_path):
    from typer.testing import CliRunner

    from kdc.cli import app

    paths = {}
    for name, labels, acc in (("img", ["cat", "dog", "fish"], 0.1111), ("digits", DIGITS, 0.9972)):
        report = copy.deepcopy(baseline)
        report.update(task="image-classification", data={"labels": labels})
        engine(report, "onnxruntime-fp32")["accuracy"]["value"] = acc
        paths[name] = tmp_path / name / "report.json"
        paths[name].parent.mkdir()
        paths[name].write_text(json.dumps(report))
    args = ["check", str(paths["img"]), "--baseline", str(paths["digits"])]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "REGRESSION" not in res.output
    [line] = [ln for ln in res.output.splitlines() if "fp32.accuracy" in ln]
    assert line.startswith("MISSING") and "data.labels 10 vs 3 classes" in line


def test_cli_baseline_that_is_not_a_report_exits_2_naming_file_and_field(baseline, tmp_path):
    from typer.testing import CliRunner

    from kdc.cli import app

    bad = tmp_path / "baseline.json"
    bad.write_text(json.dumps({**baseline, "engines": [{"engine": "x"}]}))
    res = CliRunner().invoke(app, ["check", str(SAMPLE), "--baseline", str(bad)])
    assert res.exit_code == 2, res.output
    [line] = res.output.strip().splitlines()
    assert line.startswith("error:") and str(bad) in line and "engines[0].precision" in line
    assert "not a kdc report.json" in line and "Traceback" not in res.output


def test_cli_different_device_exits_1_naming_it(baseline, tmp_path):
    from typer.testing import CliRunner

    from kdc.cli import app

    current = copy.deepcopy(baseline)
    set_latency(current, "onnxruntime-fp32", device="Intel Xeon (2 threads)", threads=4)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(current))
    res = CliRunner().invoke(app, ["check", str(report), "--baseline", str(SAMPLE)])
    assert res.exit_code == 1, res.output
    [line] = [ln for ln in res.output.splitlines() if "not comparable" in ln]
    assert line.startswith("MISSING    onnxruntime-fp32.latency ")
    assert "device 'AMD EPYC 7B13 64-Core Processor (2 threads)' vs 'Intel Xeon" in line
    assert "threads 2 vs 4" in line


def test_cli_constraint_pass_not_a_boolean_exits_2_on_one_line(baseline, tmp_path):
    from typer.testing import CliRunner

    from kdc.cli import app

    baseline["constraints"][1]["pass"] = "yes"
    report = tmp_path / "report.json"
    report.write_text(json.dumps(baseline))
    res = CliRunner().invoke(app, ["check", str(report), "--baseline", str(SAMPLE)])
    assert res.exit_code == 2, res.output
    [line] = res.output.strip().splitlines()
    assert line.startswith("error:") and "constraints[1].pass" in line and str(report) in line
    assert "true or false" in line


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
    r = by_metric(compare(current, baseline))["tensorrt-int8.latency"]
    assert r.status == "missing" and r.failed
    assert "kind changed" in r.message and r.limit is None


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


def test_junit_is_valid_and_counts_failures(baseline, tmp_path):
    current = copy.deepcopy(baseline)
    engine(current, "onnxruntime-int8")["accuracy"]["value"] -= 0.02
    engine(current, "tensorrt-int8")["latency"]["p50_ms"] *= 2
    results = compare(current, baseline)
    path = write_junit(results, tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert root.tag == "testsuites" and suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(results) == int(suite.get("tests"))
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == int(suite.get("failures")) == 2
    assert {c.get("classname") for c in failed} == {"onnxruntime-int8", "tensorrt-int8"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10%", 0.10),
        ("0.5pt", 0.005),
        ("2.5 %", 0.025),
        ("1pp", 0.01),
        ("0.05", 0.05),
        (".5pts", 0.005),
    ],
)
def test_parse_tolerance(text, value):
    assert parse_tolerance(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "ten", "10", "-5%", "5ms", "1e-3"])
def test_parse_tolerance_rejects_junk(text):
    with pytest.raises(UserError, match="tolerance"):
        parse_tolerance(text, field="--latency-tolerance")


def test_update_baseline_copies_a_valid_report(tmp_path):
    dst = update_baseline(SAMPLE, tmp_path / "ci" / "baseline.json")
    assert dst.read_bytes() == SAMPLE.read_bytes()
    assert load_report(dst)["run"]["name"] == "sst2-minilm"


def test_update_baseline_refuses_junk_and_keeps_old_baseline(tmp_path):
    old = tmp_path / "baseline.json"
    old.write_text(SAMPLE.read_text())
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        update_baseline(bad, old)
    bad.write_text("[]")
    with pytest.raises(UserError, match="not a kdc report"):
        update_baseline(bad, old)
    with pytest.raises(UserError, match="not found"):
        update_baseline(tmp_path / "missing.json", old)
    assert old.read_text() == SAMPLE.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.json", "report.json"]


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


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.update(engines=[1, 2]), "engines[0]"),
        (lambda r: r["engines"][0].update(accuracy="high"), "engines[0].accuracy"),
        (lambda r: r["engines"][0]["accuracy"].update(value="0.8"), "engines[0].accuracy.value"),
        (lambda r: r["engines"][1]["latency"].update(p99_ms="slow"), "engines[1].latency.p99_ms"),
        (lambda r: r["engines"][1]["latency"].update(cv=True), "engines[1].latency.cv"),
        (
            lambda r: r["engines"][1]["latency"].update(rounds_p50_ms=["5.2"]),
            "engines[1].latency.rounds_p50_ms[0]",
        ),
        (
            lambda r: r["engines"][1]["latency"].update(iterations=5.5),
            "engines[1].latency.iterations",
        ),
        (lambda r: r["engines"][2].update(precision=["int8"]), "engines[2].precision"),
        (
            lambda r: r["engines"][1]["latency"].update(iterations=-5),
            "engines[1].latency.iterations",
        ),
        (lambda r: r["engines"][1]["latency"].update(cv=-0.1), "engines[1].latency.cv"),
        (lambda r: r.update(target="host"), "target"),
        (lambda r: r.update(target=["host"]), "target"),
        (lambda r: r.update(constraints={"a": 1}), "constraints"),
        (lambda r: r["constraints"][0].pop("limit"), "constraints[0].limit"),
        (lambda r: r["constraints"][0].update(value="0.5"), "constraints[0].value"),
        (lambda r: r["constraints"][0].update({"pass": "yes"}), "constraints[0].pass"),
        (lambda r: r["constraints"][0].pop("pass"), "constraints[0].pass"),
        (lambda r: r.update(task="regression"), "task"),
        (lambda r: r.pop("task"), "task"),
        (lambda r: r.pop("target"), "target"),
        (lambda r: r["target"].pop("name"), "target.name"),
        (lambda r: r["engines"][0].pop("engine"), "engines[0].engine"),
        (lambda r: r["engines"][1].pop("precision"), "engines[1].precision"),
        (lambda r: r["engines"][3].pop("status"), "engines[3].status"),
        (lambda r: r.update(engines=[{"engine": "x"}]), "engines[0].precision"),
        (lambda r: r.update(data={"labels": "cat,dog"}), "data.labels"),
        (lambda r: r.update(data={"labels": [0, 1]}), "data.labels[0]"),
    ],
)
def test_structurally_invalid_report_names_the_file_and_field(baseline, tmp_path, edit, field):
    edit(baseline)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    with pytest.raises(UserError, match="not a kdc report") as e:
        load_report(path, "baseline")
    assert e.value.field == field and e.value.source == str(path)
    assert "\n" not in str(e.value)


def test_junit_onto_a_directory_is_a_user_error(baseline, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UserError) as e:
        write_junit(compare(baseline, baseline), target)
    assert e.value.field == "--junit"
    assert list(tmp_path.iterdir()) == [target] and not any(target.iterdir())


def test_update_baseline_onto_a_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as e:
        update_baseline(SAMPLE, tmp_path)
    assert e.value.field == "--baseline" and list(tmp_path.iterdir()) == []


def test_cli_junit_onto_a_directory_exits_2(tmp_path):
    from typer.testing import CliRunner

    from kdc.cli import app

    res = CliRunner().invoke(
        app, ["check", str(SAMPLE), "--baseline", str(SAMPLE), "--junit", str(tmp_path)]
    )
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "--junit" in last and "internal" not in res.output


def test_cli_prints_one_line_per_metric_when_not_a_terminal(baseline, tmp_path):
    """CI logs are not a terminal: a long line must not be wrapped onto the next."""
    from typer.testing import CliRunner

    from kdc.cli import app

    current = copy.deepcopy(baseline)
    engine(current, "onnxruntime-int8")["latency"]["kind"] = "predicted"  # a long MISSING line
    report = tmp_path / "report.json"
    report.write_text(json.dumps(current))
    res = CliRunner().invoke(app, ["check", str(report), "--baseline", str(SAMPLE)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and any(len(line) > 160 for line in lines)
    assert all(line.split()[0] in {"PASS", "REGRESSION", "IMPROVED", "MISSING"} for line in lines)


def test_p99_uses_its_own_spread_over_rounds():
    """A p99 that varies 30 % between rounds is not gated at the p50's 2 % spread."""
    from kdc.deploy.check import _noise

    base = {"kind": "measured", "rounds_p50_ms": [10.0, 10.1, 10.2], "rounds_p99_ms": [12, 15, 14]}
    cur = {**base}
    p50, how50 = _noise(base, cur, "p50")
    p99, how99 = _noise(base, cur, "p99")
    assert p50 < 0.06 and "p50 spread" in how50
    assert p99 > 0.5 and "p99 spread" in how99
    old = {k: v for k, v in base.items() if k != "rounds_p99_ms"}  # an older report
    assert _noise(old, cur, "p99") == (p50, how50)
