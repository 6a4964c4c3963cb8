"""bench/compare.py's arguments: --base-ms is one example's p50, so it is refused where the run
builds both examples (the digits CNN's p50 is not the sentiment transformer's)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))  # as test_dla does


@pytest.fixture
def compare(monkeypatch) -> tuple:
    import compare

    calls: list[tuple] = []
    monkeypatch.setattr(compare, "run_example", lambda *a: calls.append(a))
    return compare.main, calls


@pytest.mark.parametrize("examples", [[], ["--example", "digits", "--example", "sentiment"]])
@pytest.mark.parametrize("option", [["--base-ms", "20"], ["--budget-config", '{"prune": {}}']])
def test_one_examples_options_with_several_are_refused(
    compare, monkeypatch, capsys, examples, option
):
    argv = ["compare.py", *examples, *option, "--reuse-calibration"]
    monkeypatch.setattr(sys, "argv", argv)
    main, calls = compare
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and calls == []
    assert option[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "says"), [("{prune: 1}", "not JSON"), ("[1]", "not a JSON object")]
)
def test_budget_config_that_is_no_json_object_is_refused(compare, monkeypatch, capsys, text, says):
    argv = ["compare.py", "--example", "digits", "--budget-config", text]
    monkeypatch.setattr(sys, "argv", argv)
    main, calls = compare
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and calls == [] and f"--budget-config: {says}" in err


def test_budget_config_reaches_a_cnn_examples_rows(monkeypatch, tmp_path):
    """run_example keeps --budget-config for the digits CNN too (it dropped it for any family
    but a transformer's)."""
    from types import SimpleNamespace

    import compare

    ctx = SimpleNamespace(teacher=SimpleNamespace(family="cnn"))
    bench = compare.Bench("digits", False, ctx, tmp_path, None)
    monkeypatch.setattr(compare, "setup", lambda example, quick: bench)
    monkeypatch.setattr(compare, "RESULTS", tmp_path)
    monkeypatch.setattr(compare, "machine", lambda: {})
    monkeypatch.setattr(compare, "update_results_md", lambda *a: None)
    monkeypatch.setattr(compare, "BUILDERS", {"kdc_budget_5x": lambda b, rows: {}})
    monkeypatch.setattr(compare, "ROWS", ["kdc_budget_5x"])
    extra = {"prune": {"ratio": 0.5}}
    compare.run_example("digits", False, ["kdc_budget_5x"], 0, extra=extra)
    assert bench.extra == extra


def test_base_ms_of_one_example_reaches_it(compare, monkeypatch):
    argv = ["compare.py", "--example", "sentiment", "--base-ms", "20", "--reuse-calibration"]
    monkeypatch.setattr(sys, "argv", argv)
    main, calls = compare
    main()
    [call] = calls
    assert call[0] == "sentiment" and call[-1] == 20.0


def test_without_base_ms_every_example_runs(compare, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["compare.py", "--only", "--reuse-calibration"])
    main, calls = compare
    main()
    assert [c[0] for c in calls] == ["digits", "sentiment"]


def test_budget_config_reaches_the_budget_rows_config(monkeypatch):
    """--budget-config's sections are merged into the budget rows' changes (search keeps its
    strategy) and named in the row's `how`."""
    from types import SimpleNamespace

    import compare

    seen: dict = {}
    monkeypatch.setattr(compare, "calibrate_host", lambda *a: {})
    failed = {"stage": "search", "exit_code": 1, "log_tail": ["stopped"]}

    def run(b, name, changes):
        seen.update(changes)
        return {"failed": failed, "wall_s": 0.0, "peak_rss_mb": 0.0}

    monkeypatch.setattr(compare, "kdc_run", run)
    distill = SimpleNamespace(augment="auto", select="last", epochs=8)
    ctx = SimpleNamespace(cfg=SimpleNamespace(distill=distill))
    b = compare.Bench("sentiment", False, ctx, None, None, base_ms=50.0)
    b.extra = {"search": {"space": {"hidden_size": {"min": 384}}}, "prune": {"head_ratio": 0.17}}
    row = compare._budget(b, 5, {"teacher_ort_fp32": {"path": "t.onnx", "p50_ms": 50.0}})
    assert seen["search"] == {"strategy": "evolution", "space": {"hidden_size": {"min": 384}}}
    assert seen["prune"] == {"head_ratio": 0.17} and seen["constraints"]["latency_budget_ms"] == 10
    assert '"prune": {"head_ratio": 0.17}' in row["how"]


def test_a_budget_rows_run_leaves_budget_config_as_given(monkeypatch, tmp_path):
    """kdc_run adds the epochs, seed and threads to its own copy of the changes: the budget
    config (shared by the PTQ and QAT rows, and quoted in their `how`) stays as given."""
    from types import SimpleNamespace

    import compare

    written: list[dict] = []
    monkeypatch.setattr(compare, "write_config", lambda base, ch, path: written.append(ch))
    monkeypatch.setattr(compare, "run_kdc", lambda *a, **k: {})
    distill = SimpleNamespace(epochs=8)
    b = compare.Bench(
        "sentiment",
        False,
        SimpleNamespace(cfg=SimpleNamespace(distill=distill)),
        tmp_path,
        None,
        epochs=48,
        seed=1,
    )
    extra = {"distill": {"precision": "bf16"}, "verify": {"iterations": 300}}
    compare.kdc_run(b, "budget5x", {**extra})
    assert extra == {"distill": {"precision": "bf16"}, "verify": {"iterations": 300}}
    assert written[0]["distill"] == {"precision": "bf16", "epochs": 48}
