"""`kdc check` compares a measured p99 only where both measurements timed enough runs
(check_noise.MIN_RUNS, from `iterations`): a p99 of 20 or 50 runs is their slowest one or two,
and a gate on it flaps. Synthetic records, no timings."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import pytest
from test_check import by_metric, set_latency
from typer.testing import CliRunner

from kdc.cli import app
from kdc.deploy.check import compare, write_junit

LABEL = "onnxruntime-fp32"  # 5.2 ms p50, 6.3 ms p99 over 500 runs in the sample report
P50, P99 = f"{LABEL}.latency_p50_ms", f"{LABEL}.latency_p99_ms"


def timed(report: dict, **fields) -> dict:
    out = copy.deepcopy(report)
    set_latency(out, LABEL, **fields)
    return out


@pytest.mark.parametrize(
    ("base_runs", "runs", "says"),
    [
        (500, 20, "p99 from 20 runs now (needs >= 100)"),
        (50, 500, "p99 from 50 runs in the baseline (needs >= 100)"),
        (20, 99, "p99 from 20 runs in the baseline and 99 runs now (needs >= 100)"),
    ],
)
@pytest.mark.parametrize("p99", [3.0, 20.0])
@pytest.mark.parametrize("strict", [False, True])
def test_a_p99_of_too_few_runs_is_not_compared_but_the_p50_is(
    baseline, base_runs, runs, says, p99, strict
):
    """Three times slower or twice as fast, its p99 neither regresses nor improves, with
    `--strict` too (the statistic is undefined, not noisy); its p50, twice as slow, regresses."""
    base = timed(baseline, iterations=base_runs)
    cur = timed(baseline, iterations=runs, p50_ms=10.4, p99_ms=p99)
    results = by_metric(compare(cur, base, strict=strict))
    r = results[P99]
    assert r.status == "skipped" and not r.failed, r.message
    assert r.message.startswith(f"6.3 -> {p99:g} ms measured; not compared: {says}")
    assert (r.baseline, r.current, r.limit) == (6.3, p99, None)
    assert results[P50].status == "regression"


def test_a_device_p99_of_too_few_runs_names_bench_sh(baseline):
    """The device's own timing (`on_target`, from the bundle's bench.sh) is not fixed by
    verify.iterations: the line names bench.sh."""
    cur = timed(baseline, iterations=20, on_target=True)
    r = by_metric(compare(cur, timed(baseline, iterations=500)))[P99]
    assert r.status == "skipped" and "bench.sh as written on the device" in r.message
    host = by_metric(compare(timed(baseline, iterations=20), timed(baseline, iterations=500)))
    assert "raise verify.iterations to 100 or more to gate it" in host[P99].message


def test_a_p99_of_100_runs_or_more_on_both_sides_is_compared(baseline):
    cur = timed(baseline, iterations=100, p99_ms=20.0)
    r = by_metric(compare(cur, timed(baseline, iterations=100)))[P99]
    assert r.status == "regression" and "runs" not in r.message, r.message


def test_a_p99_whose_runs_are_not_recorded_is_compared_and_says_so(baseline):
    """A report of an older kdc records no `iterations`: its p99 is compared as before, and the
    line says what it could not check."""
    old = timed(baseline)
    del set_latency(old, LABEL)["iterations"]
    r = by_metric(compare(timed(baseline, p99_ms=20.0), old))[P99]
    assert r.status == "regression", r.message
    assert (
        "timed runs not recorded in the baseline (iterations): compared, though a p99 needs "
        ">= 100 of them" in r.message
    )
    # fewer than 100 on the side that records them: not compared, whatever the other side
    r = by_metric(compare(timed(baseline, iterations=20, p99_ms=20.0), old))[P99]
    assert r.status == "skipped" and "p99 from 20 runs now" in r.message


def test_a_skipped_p99_passes_the_cli_and_is_a_junit_skip(baseline, tmp_path):
    base, report = tmp_path / "baseline.json", tmp_path / "report.json"
    base.write_text(json.dumps(timed(baseline, iterations=50)))
    report.write_text(json.dumps(timed(baseline, iterations=50, p99_ms=20.0)))
    junit = tmp_path / "junit.xml"
    res = CliRunner().invoke(
        app, ["check", str(report), "--baseline", str(base), "--junit", str(junit)]
    )
    assert res.exit_code == 0, res.output
    [line] = [ln for ln in res.output.splitlines() if P99 in ln]
    assert line.startswith("SKIPPED") and "not compared: p99 from 50 runs" in line
    case = next(
        c
        for c in ET.parse(junit).iter("testcase")
        if c.get("name") == "latency_p99_ms" and c.get("classname") == LABEL
    )
    assert case.find("skipped") is not None and case.find("failure") is None
    suite = ET.parse(junit).find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("skipped")) >= 1
    write_junit(compare(timed(baseline), timed(baseline)), tmp_path / "all.xml")  # none skipped
    assert ET.parse(tmp_path / "all.xml").find("testsuite").get("skipped") == "0"
