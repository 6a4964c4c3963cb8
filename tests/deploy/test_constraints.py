import copy
import json
from pathlib import Path

import pytest

from kdc.deploy.constraints import evaluate_constraints, passed, shipped_engine
from kdc.errors import UserError

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"
PROFILE = {"batch": 1, "latency_budget_ms": 10.0, "max_memory_mb": 2048, "channel_divisor": 16}


@pytest.fixture
def report() -> dict:
    return json.loads(SAMPLE.read_text())


def rows_by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def test_shipped_engine_is_first_built_of_chosen_precision(report):
    assert shipped_engine(report)["path"] == "build/onnxruntime/model.int8.onnx"
    report["student"]["precision"] = "fp32"
    assert shipped_engine(report)["path"] == "build/onnxruntime/model.onnx"


def test_remote_target_uses_predicted_latency_and_says_so(report):
    row = rows_by_name(evaluate_constraints(report, {}, PROFILE))["latency_p99_ms"]
    assert row["source"] == "predicted"
    assert row["value"] == 0.55  # target_latency p50 of onnxruntime-int8, not the host's p99
    assert "p50" in row["note"] and row["limit_from"] == "profile"
    assert row["pass"] is True


def test_host_target_uses_measured_p99(report):
    report["target"] = {"name": "host"}
    row = rows_by_name(evaluate_constraints(report, {}, PROFILE))["latency_p99_ms"]
    assert (row["source"], row["value"], row["engine"]) == ("measured", 3.9, "onnxruntime-int8")


def test_a_long_tail_of_a_measured_p99_is_noted(report):
    """A p99 over twice the p50 (load inflates the tail) is noted with the ratio and the cv."""
    report["target"] = {"name": "host"}
    assert "note" not in rows_by_name(evaluate_constraints(report, {}, PROFILE))["latency_p99_ms"]
    lat = shipped_engine(report)["latency"]
    lat.update(p50_ms=0.07, p99_ms=4.2, cv=3.95)
    row = rows_by_name(evaluate_constraints(report, {}, PROFILE))["latency_p99_ms"]
    assert row["note"].startswith("p99 is 60.0× the p50 (0.07 ms, cv 395%): a busy or throttled")


def test_measured_on_target_beats_prediction(report):
    report["engines"][2]["latency"] = {
        "kind": "measured",
        "on_target": True,
        "p99_ms": 0.8,
        "p50_ms": 0.6,
        "device": "Orin Nano",
    }
    row = rows_by_name(evaluate_constraints(report, {}, PROFILE))["latency_p99_ms"]
    assert (row["source"], row["value"], row["engine"]) == ("measured", 0.8, "tensorrt-int8")


def test_budget_fails_when_latency_exceeds_it(report):
    rows = evaluate_constraints(report, {"latency_budget_ms": 0.5}, PROFILE)
    row = rows_by_name(rows)["latency_p99_ms"]
    assert row["pass"] is False and row["limit"] == 0.5 and row["limit_from"] == "config"
    assert passed(rows) is False


def test_accuracy_drop_and_relative_degradation(report):
    rows = rows_by_name(
        evaluate_constraints(
            report, {"max_accuracy_drop": 0.01, "percent_max_degradation": 2.0}, {}
        )
    )
    drop = rows["accuracy_drop"]
    assert drop["value"] == pytest.approx(0.8127 - 0.8021)
    assert drop["source"] == "measured" and drop["engine"] == "onnxruntime-int8"
    assert drop["pass"] is False  # 1.06 points > 1 point
    assert "note" not in drop  # the sample engine has no interval
    pct = rows["percent_max_degradation"]
    assert pct["value"] == pytest.approx((0.8127 - 0.8021) / 0.8127 * 100, abs=1e-3)
    assert pct["pass"] is True


def test_accuracy_drop_note_gives_the_interval(report):
    eng = shipped_engine(report)
    eng["accuracy"]["accuracy_drop_ci95"] = [-0.012, 0.033]
    row = evaluate_constraints(report, {"max_accuracy_drop": 0.02}, {})[0]
    assert row["note"] == "95 % interval -0.012 to 0.033 (paired over 379 eval rows)"


def test_only_constraints_with_limits_are_listed(report):
    assert [r["name"] for r in evaluate_constraints(report, {"max_size_mb": None}, {})] == []
    assert passed([]) is True


def test_undeterminable_value_fails_with_reason(report):
    report["student"]["precision"] = "fp16"  # only a bundle: nothing built, no accuracy
    rows = rows_by_name(
        evaluate_constraints(report, {"max_accuracy_drop": 0.02, "max_size_mb": 10}, PROFILE)
    )
    for name in ("accuracy_drop", "size_mb"):
        assert rows[name]["pass"] is False and rows[name]["value"] is None
        assert "no built engine of precision fp16" in rows[name]["reason"]
    assert rows["latency_p99_ms"]["pass"] is True  # the bundle's prediction still answers


def test_memory_measured_off_target_without_prediction_fails(report):
    report["engines"] = report["engines"][:2]  # drop the bundles and their predicted memory
    row = rows_by_name(evaluate_constraints(report, {}, PROFILE))["memory_mb"]
    assert row["pass"] is False and "off the target" in row["reason"]
    report["target"] = {"name": "host"}
    row = rows_by_name(evaluate_constraints(report, {}, PROFILE))["memory_mb"]
    assert (row["source"], row["value"]) == ("measured", 96.4)


def test_flat_metrics_accuracy_is_read_at_the_primary_metric(report):
    flat = copy.deepcopy(report)
    flat["teacher"]["accuracy"] = {"accuracy": 0.9, "macro_f1": 0.5, "n": 10}
    flat["engines"][0]["accuracy"] = {"accuracy": 0.88, "macro_f1": 0.4, "n": 10}
    row = evaluate_constraints(flat, {"max_accuracy_drop": 0.05}, {})[0]
    assert row["value"] == pytest.approx(0.02) and row["pass"] is True


def test_metric_mismatch_is_reported(report):
    report["teacher"]["accuracy"]["metric"] = "macro_f1"
    row = evaluate_constraints(report, {"max_accuracy_drop": 0.05}, {})[0]
    assert row["pass"] is False and "differs" in row["reason"]


def test_unknown_constraint_is_a_user_error(report):
    with pytest.raises(UserError, match="unknown constraint 'max_latency'"):
        evaluate_constraints(report, {"max_latency": 3}, PROFILE)


def test_an_engine_built_here_has_its_memory_predicted_for_a_remote_target(report):
    """`kdc verify RUN --target jetson` on a host run: only ONNX Runtime engines, their memory
    measured here; the target's memory is their prediction (`target_memory`), not a failure."""
    report["engines"] = [e for e in report["engines"] if e["engine"] == "onnxruntime"]
    row = rows_by_name(evaluate_constraints(report, {}, PROFILE))["memory_mb"]
    assert row["value"] is None and row["pass"] is False  # measured off the target only
    report["engines"][0]["target_memory"] = {"kind": "predicted", "peak_mb": 3.5}
    row = rows_by_name(evaluate_constraints(report, {}, PROFILE))["memory_mb"]
    assert (row["source"], row["value"], row["pass"]) == ("predicted", 3.5, True)
    assert "runtime" in row["note"]  # weights + activations only, said so


def test_a_config_loosening_the_profiles_limits_is_warned(tmp_path):
    """PROFILES.md: a profile's defaults are constraints a config may tighten. A looser budget
    or memory limit is judged by the config's, and said; one beyond the board's memory too."""
    from tiny import cnn_config, write_yaml

    from kdc.config import load_config
    from kdc.preflight import target_warnings
    from kdc.profiles import load_profile

    nano = load_profile("jetson")

    def warned(**limits) -> str:
        cfg = load_config(write_yaml(tmp_path / "m.yaml", cnn_config(constraints=limits)))
        return " ".join(target_warnings(cfg, nano))

    said = warned(latency_budget_ms=20.0, max_memory_mb=99999)
    assert "constraints.latency_budget_ms 20 ms loosens jetson-orin-nano-8gb's limit of 10" in said
    assert "constraints.max_memory_mb 99999 MiB loosens" in said and "than jetson" in said
    assert warned(latency_budget_ms=5.0, max_memory_mb=1024) == ""


def test_a_pass_resting_on_predicted_figures_says_so():
    """A Jetson run's PASS of latency and memory is the latency model's, not a board's timing."""
    from kdc.deploy.constraints import verdict

    rows = [
        {"name": "accuracy_drop", "pass": True, "source": "measured"},
        {"name": "latency_p99_ms", "pass": True, "source": "predicted"},
        {"name": "memory_mb", "pass": True, "source": "predicted"},
    ]
    trt = {"engine": "tensorrt", "precision": "int8", "status": "bundle", "ships": True}
    trt["accuracy"] = {"value": 0.9, "stand_in": "qdq-in-float"}
    report = {"passed": True, "constraints": rows, "target": {"name": "jetson-orin-nano-8gb"}}
    report["engines"] = [trt]
    assert verdict(report) == (
        "PASSED (not measured on jetson-orin-nano-8gb: latency_p99_ms, memory_mb predicted; "
        "accuracy_drop from a stand-in run here)"
    )
    rows[1]["source"] = rows[2]["source"] = "measured"
    del trt["accuracy"]["stand_in"]  # the device's results read back
    assert verdict(report) == "PASSED"
    report["passed"] = False
    assert verdict(report) == "FAILED"
