import copy
import json
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
    lat = engine(current, "onnxruntime-fp32")["latency"]  # cv 2.2% -> noise ~6.2%
    lat["p99_ms"] *= 1.20
    r = by_metric(compare(current, baseline))["onnxruntime-fp32.latency_p99_ms"]
    assert r.status == "regression" and r.failed
    assert r.noise == pytest.approx(2 * (2 * 0.022**2) ** 0.5)
    assert r.limit == pytest.approx(6.3 * 1.10)


def test_slowdown_within_noise_passes(baseline):
    current = copy.deepcopy(baseline)
    for report in (current, baseline):
        engine(report, "onnxruntime-int8")["latency"]["cv"] = 0.10  # noise 28%
    engine(current, "onnxruntime-int8")["latency"]["p99_ms"] *= 1.20  # beyond 10 % tolerance
    r = by_metric(compare(current, baseline))["onnxruntime-int8.latency_p99_ms"]
    assert r.status == "pass" and not r.failed


def test_predicted_latency_has_no_noise(baseline):
    current = copy.deepcopy(baseline)
    engine(current, "tensorrt-int8")["latency"]["p50_ms"] *= 1.15
    engine(current, "tensorrt-fp16")["latency"]["p50_ms"] *= 0.5
    results = by_metric(compare(current, baseline))
    assert results["tensorrt-int8.latency_p50_ms"].status == "regression"
    assert results["tensorrt-int8.latency_p50_ms"].noise == 0
    assert results["tensorrt-fp16.latency_p50_ms"].status == "improved"


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
        (lambda r: r["engines"][2].update(precision=["int8"]), "engines[2].precision"),
        (lambda r: r.update(constraints={"a": 1}), "constraints"),
        (lambda r: r["constraints"][0].pop("limit"), "constraints[0].limit"),
        (lambda r: r["constraints"][0].update(value="0.5"), "constraints[0].value"),
        (lambda r: r.update(task="regression"), "task"),
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
