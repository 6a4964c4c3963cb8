"""`kdc check`'s files and command line: the JUnit file, the baseline it updates, tolerances as
typed, reports that are not reports, and what the CLI prints and exits with (test_check.py holds
the comparison itself)."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_check import DIGITS, engine, set_latency
from typer.testing import CliRunner

from kdc.cli import app
from kdc.deploy.check import compare, parse_tolerance, write_junit
from kdc.deploy.report_file import load_report, update_baseline
from kdc.errors import UserError

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"  # the baseline


def test_cli_baseline_of_another_model_exits_1_without_a_regression(baseline, tmp_path):

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

    bad = tmp_path / "baseline.json"
    bad.write_text(json.dumps({**baseline, "engines": [{"engine": "x"}]}))
    res = CliRunner().invoke(app, ["check", str(SAMPLE), "--baseline", str(bad)])
    assert res.exit_code == 2, res.output
    [line] = res.output.strip().splitlines()
    assert line.startswith("error:") and str(bad) in line and "engines[0].precision" in line
    assert "not a kdc report.json" in line and "Traceback" not in res.output


def test_cli_different_device_exits_1_naming_it(baseline, tmp_path):

    current = copy.deepcopy(baseline)
    set_latency(current, "onnxruntime-fp32", device="Intel Xeon (2 threads)", threads=4)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(current))
    res = CliRunner().invoke(app, ["check", str(report), "--baseline", str(SAMPLE)])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if "not comparable" in ln]
    assert [ln.split()[1] for ln in lines] == [
        "onnxruntime-fp32.latency_p50_ms",  # named as when compared: one JUnit test each
        "onnxruntime-fp32.latency_p99_ms",
    ]
    line = lines[0]
    assert "device 'AMD EPYC 7B13 64-Core Processor (2 threads)' vs 'Intel Xeon" in line
    assert "threads 2 vs 4" in line


def test_cli_memory_growth_fails_and_its_tolerance_is_an_option(baseline, tmp_path):
    current = copy.deepcopy(baseline)
    current["engines"][0]["memory"]["engine_mb"] *= 1.15
    report = tmp_path / "report.json"
    report.write_text(json.dumps(current))
    args = ["check", str(report), "--baseline", str(SAMPLE)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "REGRESSION onnxruntime-int8.memory_mb" in res.output
    assert CliRunner().invoke(app, [*args, "--memory-tolerance", "20%"]).exit_code == 0
    bad = CliRunner().invoke(app, [*args, "--memory-tolerance", "big"])
    assert bad.exit_code == 2 and "--memory-tolerance" in bad.output


def test_cli_constraint_pass_not_a_boolean_exits_2_on_one_line(baseline, tmp_path):

    baseline["constraints"][1]["pass"] = "yes"
    report = tmp_path / "report.json"
    report.write_text(json.dumps(baseline))
    res = CliRunner().invoke(app, ["check", str(report), "--baseline", str(SAMPLE)])
    assert res.exit_code == 2, res.output
    [line] = res.output.strip().splitlines()
    assert line.startswith("error:") and "constraints[1].pass" in line and str(report) in line
    assert "true or false" in line


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
    ("text", "kind", "value"),
    [
        ("10%", "relative", 0.10),
        ("2.5 %", "relative", 0.025),
        ("0.05", "relative", 0.05),
        ("0.5pt", "points", 0.005),
        ("1pp", "points", 0.01),
        (".5pts", "points", 0.005),
    ],
)
def test_parse_tolerance(text, kind, value):
    assert parse_tolerance(text, kind=kind) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "ten", "10", "-5%", "5ms", "1e-3", "0.5pt"])
def test_parse_tolerance_rejects_junk(text):
    with pytest.raises(UserError, match="tolerance"):
        parse_tolerance(text, field="--latency-tolerance")


@pytest.mark.parametrize("text", ["0.5", "5%", "1"])
def test_an_accuracy_tolerance_needs_points(text):
    """A bare 0.5 allowed a 50-point drop; '5%' read as points while '%' is relative for
    latency: both are refused, naming the unit."""
    with pytest.raises(UserError, match=r"write it as e.g. 0.5pt \(points\)"):
        parse_tolerance(text, field="--accuracy-tolerance", kind="points")


def test_every_accuracy_tolerance_unit_is_documented():
    """`pts` was read but named nowhere: --help, the README's row and docs/ci.md name each unit
    parse_tolerance reads for points."""
    from kdc.deploy.check import TOLERANCE_UNITS

    root = Path(__file__).resolve().parents[2]
    res = CliRunner().invoke(app, ["check", "--help"], env={"COLUMNS": "200"})
    texts = {
        "--help": " ".join(res.output.replace("│", " ").split()),
        "README": next(
            r for r in (root / "README.md").read_text().splitlines() if r.startswith("| `kdc check")
        ),
        "docs/ci.md": (root / "docs" / "ci.md").read_text(),
    }
    for unit in TOLERANCE_UNITS["points"]:
        assert parse_tolerance(f"0.5{unit}", kind="points") == pytest.approx(0.005)
        for where, text in texts.items():
            assert f"0.5{unit}" in text or f"`{unit}`" in text, f"{where} lacks {unit}"


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
        (
            lambda r: r["engines"][0]["memory"].update(peak_rss_mb="96"),
            "engines[0].memory.peak_rss_mb",
        ),
        (lambda r: r["engines"][1].update(size_mb=[22.4]), "engines[1].size_mb"),
        # NaN compares false with every limit: it passed `kdc check` (and a list crashed it)
        (
            lambda r: r["engines"][1]["accuracy"].update(value=float("nan")),
            "engines[1].accuracy.value",
        ),
        (
            lambda r: r["engines"][0]["latency"].update(p50_ms=float("inf")),
            "engines[0].latency.p50_ms",
        ),
        (lambda r: r["engines"][0]["memory"].update(engine_mb=[1]), "engines[0].memory.engine_mb"),
        (lambda r: r["constraints"][0].update(source=3), "constraints[0].source"),
        (
            lambda r: r["engines"][0].update(
                predicted_latency={"kind": "predicted", "p50_ms": float("nan")}
            ),
            "engines[0].predicted_latency.p50_ms",
        ),
        # REPORT.md: a latency is measured or predicted, no other kind exists; one of another
        # kind, or none, was left out of the comparison (exit 0 when both reports had it)
        (lambda r: r["engines"][0]["latency"].update(kind="guessed"), "engines[0].latency.kind"),
        (lambda r: r["engines"][0]["latency"].pop("kind"), "engines[0].latency.kind"),
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

    res = CliRunner().invoke(
        app, ["check", str(SAMPLE), "--baseline", str(SAMPLE), "--junit", str(tmp_path)]
    )
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "--junit" in last and "internal" not in res.output


def test_cli_prints_one_line_per_metric_when_not_a_terminal(baseline, tmp_path):
    """CI logs are not a terminal: a long line must not be wrapped onto the next."""

    current = copy.deepcopy(baseline)
    engine(current, "onnxruntime-int8")["latency"]["kind"] = "predicted"  # a long MISSING line
    report = tmp_path / "report.json"
    report.write_text(json.dumps(current))
    res = CliRunner().invoke(app, ["check", str(report), "--baseline", str(SAMPLE)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and any(len(line) > 160 for line in lines)
    statuses = {"PASS", "WARN", "REGRESSION", "IMPROVED", "MISSING"}
    assert all(line.split()[0] in statuses for line in lines)


def test_a_failed_report_made_the_baseline_is_warned(tmp_path):
    failed = json.loads(SAMPLE.read_text())
    failed["passed"] = False
    failed["constraints"][0]["pass"] = False
    report = tmp_path / "report.json"
    report.write_text(json.dumps(failed))
    args = ["check", str(report), "--baseline", str(tmp_path / "b.json"), "--update-baseline"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    name = failed["constraints"][0]["name"]
    assert f"warning: the new baseline is a FAILED report ({name})" in res.output


def test_a_baseline_without_engines_is_refused_as_gating_nothing(baseline, tmp_path):
    """A failed search's report made the baseline: every later line was "new in this report"
    and any report passed."""
    empty = tmp_path / "b.json"
    empty.write_text(json.dumps({**baseline, "engines": [], "passed": False}))
    res = CliRunner().invoke(app, ["check", str(SAMPLE), "--baseline", str(empty)])
    assert res.exit_code == 2 and "the baseline has no engines" in res.output, res.output


def test_predicted_latency_kind_leaves_the_runners_measured_memory_alone(baseline, tmp_path):
    """ci.md's CPU-runner gate (--latency-kind predicted) failed on a runner of another CPU
    model through its measured peak RSS, tied to the device."""
    current = copy.deepcopy(baseline)
    for e in current["engines"]:
        if (e.get("memory") or {}).get("kind") == "measured":
            e["memory"]["device"] = "Intel Xeon Platinum 8370C"
            e["memory"]["engine_mb"] *= 3
    report = tmp_path / "report.json"
    report.write_text(json.dumps(current))
    args = ["check", str(report), "--baseline", str(SAMPLE)]
    res = CliRunner().invoke(app, [*args, "--latency-kind", "predicted"])
    assert res.exit_code == 0 and "onnxruntime-int8.memory_mb" not in res.output, res.output
    assert "tensorrt-int8.memory_mb" in res.output  # the predictions are still compared
    assert "onnxruntime-int8.memory_mb" in CliRunner().invoke(app, args).output


def test_a_baseline_latency_missing_its_figure_fails(baseline, tmp_path):
    broken = copy.deepcopy(baseline)
    engine(broken, "onnxruntime-fp32")["latency"]["p50_ms"] = None
    path = tmp_path / "b.json"
    path.write_text(json.dumps(broken))
    res = CliRunner().invoke(app, ["check", str(SAMPLE), "--baseline", str(path)])
    assert res.exit_code == 1 and "the baseline has no p50_ms" in res.output, res.output
