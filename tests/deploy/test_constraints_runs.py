"""A measured p99 of fewer timed runs than check_noise.MIN_RUNS is not judged against a latency
budget: the row keeps the value, fails, and says why and the fix; the p50 of a prediction and
the other constraints are judged as before."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from kdc.deploy.check_noise import MIN_RUNS
from kdc.deploy.constraints import evaluate_constraints, passed, shipped_engine
from kdc.deploy.report import console_summary
from kdc.deploy.report_md import render_markdown

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"
NEED = MIN_RUNS["p99"]


@pytest.fixture
def host_report() -> dict:
    report = json.loads(SAMPLE.read_text())
    report["target"] = {"name": "host"}
    return report


def latency_row(report: dict, budget: float = 10.0) -> dict:
    rows = evaluate_constraints(report, {"latency_budget_ms": budget}, {})
    return next(r for r in rows if r["name"] == "latency_p99_ms")


def test_a_p99_of_too_few_runs_is_not_judged_and_fails(host_report):
    shipped_engine(host_report)["latency"]["iterations"] = 20
    row = latency_row(host_report)
    assert row["value"] == 3.9 and row["source"] == "measured"  # what was timed is still said
    assert row["pass"] is False  # 3.9 <= 10, yet a gate cannot pass on a p99 of 20 runs
    assert row["reason"] == (
        f"not judged: p99 from 20 runs (needs >= {NEED}); raise verify.iterations to {NEED} or more"
    )
    assert passed([row]) is False


def test_a_p99_over_budget_of_too_few_runs_is_not_judged_either(host_report):
    shipped_engine(host_report)["latency"]["iterations"] = 10
    row = latency_row(host_report, budget=1.0)
    assert row["pass"] is False and row["reason"].startswith("not judged: p99 from 10 runs")


def test_enough_runs_or_none_recorded_are_judged(host_report):
    lat = shipped_engine(host_report)["latency"]
    for runs in (NEED, None):  # a report of an older kdc records no runs: judged as before
        lat["iterations"] = runs
        row = latency_row(host_report)
        assert row["pass"] is True and "reason" not in row


def test_timing_stopped_at_its_limit_names_it(host_report):
    lat = shipped_engine(host_report)["latency"]
    lat.update(iterations=40, duration_s=60.2, max_duration_s=60.0, p50_ms=1500.0)
    reason = latency_row(host_report, budget=5000.0)["reason"]
    assert reason.startswith(f"not judged: p99 from 40 runs (needs >= {NEED}); timing stopped")
    assert "60 s limit (p50 1500 ms a run): raise verify.max_duration_s" in reason


def test_a_device_p99_of_too_few_runs_names_bench_sh(host_report):
    host_report["target"] = {"name": "jetson-orin-nano-8gb"}
    trt = host_report["engines"][2]
    trt.update(status="built", built_on="device")  # as `kdc verify --device-results` records
    trt["latency"] = {"kind": "measured", "on_target": True, "p50_ms": 0.6, "p99_ms": 0.8}
    trt["latency"]["iterations"] = 50
    row = latency_row(host_report)
    assert row["engine"] == "tensorrt-int8" and row["pass"] is False
    assert row["reason"].endswith(
        "run the bundle's bench.sh as written on the device (it times more)"
    )


def test_a_predicted_p50_is_judged_whatever_the_runs(host_report):
    host_report["target"] = {"name": "jetson-orin-nano-8gb"}
    shipped_engine(host_report)["latency"]["iterations"] = 20  # the host's timing, not judged
    row = latency_row(host_report)
    assert row["source"] == "predicted" and row["pass"] is True and "reason" not in row


def test_console_and_markdown_say_the_p99_was_not_judged(host_report):
    shipped_engine(host_report)["latency"]["iterations"] = 20
    host_report["constraints"] = [latency_row(host_report)]
    host_report["passed"] = False
    said = f"not judged: p99 from 20 runs (needs >= {NEED})"
    console = Console(width=400, record=True)
    console.print(console_summary(host_report))
    text = console.export_text()
    assert f"FAIL latency_p99_ms 3.9 (limit 10, measured, onnxruntime-int8): {said}" in text
    assert said in render_markdown(host_report)


def test_too_few_iterations_for_a_judged_p99_are_warned_at_the_start(tmp_path):
    """Where verify's own timing is judged against a budget (host), verify.iterations under
    MIN_RUNS is warned before the run (a warning: verify.min_duration_s may time enough runs)."""
    from tiny import cnn_config, write_yaml

    from kdc.config import load_config
    from kdc.preflight import target_warnings
    from kdc.profiles import host_profile, load_profile

    def warned(target: str, iterations: int = 20, **limits) -> str:
        data = cnn_config(constraints=limits)
        data["verify"]["iterations"] = iterations
        cfg = load_config(write_yaml(tmp_path / "m.yaml", data))
        profile = host_profile() if target == "host" else load_profile(target)
        return " ".join(target_warnings(cfg, profile))

    said = warned("host", latency_budget_ms=5.0)
    assert said == (
        f"verify.iterations 20 < {NEED}: the latency budget (5 ms, constraints.latency_budget_ms) "
        f"is judged by the p99 measured on host, which needs >= {NEED} timed runs; a p99 of "
        f"fewer is not judged and fails the run: raise verify.iterations to {NEED}"
    )
    assert warned("host") == ""  # no budget: nothing judged
    assert warned("host", iterations=NEED, latency_budget_ms=5.0) == ""
    assert "verify.iterations" not in warned("jetson")  # its default budget judges a prediction
    host = host_profile().model_copy(update={"defaults": load_profile("jetson").defaults})
    cfg = load_config(write_yaml(tmp_path / "m.yaml", cnn_config()))
    assert "(10 ms, host's default budget)" in " ".join(target_warnings(cfg, host))


def test_too_few_runs_for_the_configs_budget_are_refused_without_a_minimum_duration(tmp_path):
    """verify.min_duration_s 0 times exactly verify.iterations runs: under MIN_RUNS, a budget the
    config sets could only fail unjudged, so the run is refused before it starts (exit 2)."""
    from tiny import cnn_config, write_yaml

    from kdc.config import load_config
    from kdc.errors import UserError
    from kdc.preflight import check_target
    from kdc.profiles import host_profile, load_profile

    data = cnn_config(constraints={"latency_budget_ms": 5.0})
    data["verify"].update(iterations=20, min_duration_s=0)
    cfg = load_config(write_yaml(tmp_path / "m.yaml", data))
    with pytest.raises(UserError) as e:
        check_target(cfg, host_profile())
    assert e.value.field == "verify.iterations" and str(tmp_path / "m.yaml") in str(e.value.source)
    assert "times 20 runs" in str(e.value) and f"raise verify.iterations to {NEED}" in e.value.fix
    check_target(cfg, load_profile("jetson"))  # a prediction is judged there
    data["verify"]["iterations"] = NEED
    check_target(load_config(write_yaml(tmp_path / "m.yaml", data)), host_profile())


def test_validate_warns_of_too_few_iterations_for_a_budget(cnn_project):
    """`kdc validate` warns as for the default target, host."""
    import yaml
    from tiny import write_yaml
    from typer.testing import CliRunner

    from kdc.cli import app

    data = yaml.safe_load(cnn_project.read_text())
    data["constraints"]["latency_budget_ms"] = 5.0
    path = write_yaml(cnn_project.parent / "p99_runs.yaml", data)  # beside the teacher's files
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert f"warning: verify.iterations 20 < {NEED}: the latency budget" in res.output
    data["verify"]["min_duration_s"] = 0  # what compress refuses on host, validate refuses too
    res = CliRunner().invoke(app, ["validate", str(write_yaml(path, data))])
    assert res.exit_code == 2 and "verify.iterations" in res.output, res.output
    assert "Traceback" not in res.output


def test_validate_reads_no_calibration_file(cnn_project, tmp_path, monkeypatch):
    """`kdc validate` checks a config, not this machine's calibration: a damaged host
    calibration file (which a run on host would name) does not fail it; its p99 warning reads
    only what calibration leaves alone (host's name, that it is timed here, no default budget)."""
    import yaml
    from tiny import write_yaml
    from typer.testing import CliRunner

    from kdc.cli import app
    from kdc.profiles import calibration_path

    monkeypatch.setenv("KDC_CONFIG_DIR", str(tmp_path / "kdc-config"))
    cal = calibration_path("host")
    cal.parent.mkdir(parents=True)
    cal.write_text("latency_model: [not, a, mapping\n")
    data = yaml.safe_load(cnn_project.read_text())
    data["constraints"]["latency_budget_ms"] = 5.0
    path = write_yaml(cnn_project.parent / "p99_runs_cal.yaml", data)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert f"warning: verify.iterations 20 < {NEED}: the latency budget" in res.output
