"""Aging evolution and exhaustive search under a latency budget, and the search stage / `kdc
search` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from tiny import bert_config, cnn_config, write_yaml
from typer.testing import CliRunner

from kdc.cli import app
from kdc.compress.proxies import PROXIES
from kdc.compress.search import evolve, exhaustive, pareto_flags
from kdc.compress.space import Space
from kdc.errors import ConstraintFailure, UserError
from kdc.stages.search import proxy_batch

runner = CliRunner()
TOY = Space({"a": list(range(10)), "b": list(range(10)), "c": list(range(10))})


def toy_score(c) -> float:
    g = c.genes
    return -float((g["a"] - 7) ** 2 + (g["b"] - 3) ** 2 + (g["c"] - 9) ** 2)


def toy_latency(c) -> float:
    return float(sum(c.genes.values()))


def _evolve(budget, **kw):
    args = {"population": 8, "cycles": 150, "sample_size": 3, "time_budget_s": 600, "seed": 0}
    return evolve(TOY, toy_score, toy_latency, budget, **{**args, **kw})


def test_evolution_improves_on_the_initial_population():
    result = _evolve(None)
    initial_best = result.history[7]  # after the 8 members of the first population
    assert result.best.score > initial_best
    assert result.best.score >= -1.0  # the optimum (7, 3, 9) scores 0
    assert result.cycles == 150
    again = _evolve(None)
    assert [s.candidate.key for s in again.scored] == [s.candidate.key for s in result.scored]


def test_budget_rejects_before_scoring():
    scored_keys = []

    def score(c):
        scored_keys.append(c.key)
        return toy_score(c)

    result = evolve(
        TOY,
        score,
        toy_latency,
        10.0,
        population=8,
        cycles=60,
        sample_size=3,
        time_budget_s=600,
        seed=1,
    )
    assert result.rejected and all(ms > 10.0 for _, ms in result.rejected)
    assert all(s.latency_ms <= 10.0 for s in result.scored)
    assert {c.key for c, _ in result.rejected}.isdisjoint(scored_keys)
    assert len(scored_keys) == len(set(scored_keys)) == len(result.scored)


def test_impossible_budget_lists_the_three_closest():
    with pytest.raises(ConstraintFailure) as e:
        evolve(
            TOY,
            toy_score,
            toy_latency,
            -1.0,
            population=4,
            cycles=5,
            sample_size=2,
            time_budget_s=600,
            seed=0,
            where=" on toy",
            other_fix=", or drop build.dla_core for the GPU",
        )
    msg = str(e.value)
    assert "budget of -1 ms on toy" in msg and e.value.exit_code == 1
    assert msg.endswith("a smaller teacher, or drop build.dla_core for the GPU)")
    listed = [float(ms) for ms in re.findall(r"\} ([\d.]+) ms", msg)]
    assert len(listed) == 3 and listed == sorted(listed) and listed[0] == 0.0
    tried = [ms for _, ms in e.value.rejected]  # every candidate tried, for rejected.jsonl
    assert len(tried) >= 3 and tried == sorted(tried)


def test_time_budget_stops_the_cycles():
    result = _evolve(None, time_budget_s=1e-9)
    assert result.cycles == 0 and len(result.scored) >= 1


def test_exhaustive_scores_every_fitting_candidate_and_finds_the_optimum():
    result = exhaustive(TOY, toy_score, toy_latency, 12.0, time_budget_s=600, seed=5)
    fitting = sum(1 for a in range(10) for b in range(10) for c in range(10) if a + b + c <= 12)
    assert len(result.scored) == fitting and len(result.rejected) == 1000 - fitting
    assert result.best.score == max(s.score for s in result.scored) and result.left == 0
    assert result.best.score == -17.0  # (4, 1, 7) and (5, 1, 6) tie; the first in gene order
    # the optimum (7, 3, 9) is over the budget: the best within it, the same on any seed
    again = exhaustive(TOY, toy_score, toy_latency, 12.0, time_budget_s=600, seed=0)
    assert again.best.candidate.key == result.best.candidate.key


def test_exhaustive_stops_at_its_time_budget_and_counts_what_it_left():
    result = exhaustive(TOY, toy_score, toy_latency, None, time_budget_s=1e-9)
    assert len(result.scored) == 1 and result.left == 999


def test_exhaustive_running_out_of_time_before_anything_fits_says_so():
    heard = []
    with pytest.raises(ConstraintFailure) as e:
        exhaustive(TOY, toy_score, toy_latency, -1.0, time_budget_s=1e-9, progress=heard.append)
    assert "search.time_budget_s ran out after " in str(e.value) and "of 1,000)" in str(e.value)
    assert len(heard) == len(e.value.rejected) < 1000 and set(heard) == {None}


def test_exhaustive_with_nothing_fitting_lists_the_closest():
    with pytest.raises(ConstraintFailure) as e:
        exhaustive(TOY, toy_score, toy_latency, -1.0, time_budget_s=600, where=" on toy")
    assert "budget of -1 ms on toy" in str(e.value) and len(e.value.rejected) == 1000


def test_pareto_flags():
    pts = [(1.0, 0.1), (2.0, 0.5), (2.0, 0.4), (3.0, 0.5), (0.5, 0.0)]
    assert pareto_flags(pts) == [True, True, False, False, True]
    # a failed (NaN) score is never on the front and keeps no other point off it
    assert pareto_flags([(1.0, float("nan")), (2.0, 0.5)]) == [False, True]


def _search(project, tmp_path, name, quiet: bool = True, **over):
    cfg = write_yaml(
        project.parent / f"{name}.yaml",
        cnn_config(
            name=name,
            search={
                "strategy": "evolution",
                "population": 4,
                "cycles": 6,
                "batch_size": 32,
                **over.pop("search", {}),
            },
            **over,
        ),
    )
    out = tmp_path / name
    return runner.invoke(app, ["search", str(cfg), "--out", str(out), *["-q"] * quiet]), out


def test_search_command_writes_candidates_plot_and_student(cnn_project, tmp_path):
    res, out = _search(
        cnn_project,
        tmp_path,
        "evo",
        constraints={"latency_budget_ms": 0.0461},
        search={"proxies": "all"},
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "search" / "candidates.jsonl").open()]
    assert rows and sum(r["chosen"] for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["proxy"] == max(r["proxy"] for r in rows) and chosen["pareto"]
    for r in rows:  # under the budget less search.latency_margin (0.1 by default)
        assert r["predicted_latency_ms"] <= 0.0461 * 0.9
        assert r["proxy"] == r["proxies"]["diswot"]
        assert set(r["proxies"]) == set(PROXIES)
        assert r["params"] == r["architecture"]["params"]
    student = json.loads((out / "search" / "student.json").read_text())
    assert student["strategy"] == "evolution" and student["proxy"] == "diswot"
    assert student["architecture"] == chosen["architecture"]
    assert student["budget_ms"] == 0.0461
    assert student["search_limit_ms"] == pytest.approx(0.0461 * 0.9)
    assert student["latency_model"]["kind"] == "predicted" and student["latency_model"]["model"]
    assert (out / "search" / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_search_records_the_free_counts_by_default(cnn_project, tmp_path):
    res, out = _search(
        cnn_project, tmp_path, "evodefault", False, constraints={"latency_budget_ms": 0.0461}
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "search" / "candidates.jsonl").open()]
    assert all(set(r["proxies"]) == {"diswot", "params", "flops"} for r in rows)
    said = " ".join(res.output.split())  # the teacher's figure is at the students' precision
    assert re.search(r"teacher predicted [\d.e-]+ ms on \S+ at int8, batch 1; the report's", said)
    metrics = json.loads((out / "manifest.json").read_text())["stages"]["search"]["metrics"]
    assert metrics["candidates_per_s"] > 0 and metrics["torch_threads"] >= 1


def test_search_command_fails_with_exit_1_when_nothing_fits(cnn_project, tmp_path):
    res, _ = _search(cnn_project, tmp_path, "nofit", constraints={"latency_budget_ms": 1e-6})
    assert res.exit_code == 1
    assert "closest predicted" in res.output and res.output.count(" ms;") >= 2
    assert "less search.latency_margin 0.1" in res.output


def test_unknown_proxy_is_a_user_error(cnn_project, tmp_path):
    res, _ = _search(cnn_project, tmp_path, "badproxy", search={"proxy": "vote"})
    assert res.exit_code == 2 and "search.proxy" in res.output
    res, _ = _search(cnn_project, tmp_path, "badproxies", search={"proxies": "every"})
    assert res.exit_code == 2 and "search.proxies" in res.output and "list of proxy" in res.output
    res, _ = _search(cnn_project, tmp_path, "badproxies2", search={"proxies": ["all"]})
    assert res.exit_code == 2 and "on its own" in res.output


@pytest.mark.parametrize("student", [{"layers": [0, 99]}, {"layers": 2, "width": 0.5}])
def test_teacher_layers_for_a_cnn_student_are_a_user_error(cnn_project, tmp_path, student):
    res, _ = _search(
        cnn_project, tmp_path, "cnnlayers", student=student, search={"strategy": "fixed"}
    )
    assert res.exit_code == 2 and "student.layers" in res.output and "student.width" in res.output


def _chosen_student_rebuilds(config, out, target="host"):
    """The distill stage's `build_student` on search/student.json's spec gives its architecture."""
    from kdc.api import open_run
    from kdc.stages.search import build_student

    chosen = json.loads((out / "search" / "student.json").read_text())
    student = build_student(open_run(config, target, out, quiet=True), chosen["spec"])
    assert student.architecture() == chosen["architecture"]
    return chosen


def test_fixed_architecture_student(cnn_project, tmp_path):
    from kdc import api

    cfg = write_yaml(
        cnn_project.parent / "arch.yaml",
        cnn_config(name="arch", student={"architecture": {"stage_width": [1.0, 0.5]}}),
    )
    api.search(cfg, "host", tmp_path / "arch", quiet=True)
    chosen = _chosen_student_rebuilds(cfg, tmp_path / "arch")
    assert chosen["strategy"] == "fixed"
    assert chosen["architecture"]["conv_channels"] == [16, 16]


def _fixed_search(config: Path, out: Path) -> tuple[dict, dict]:
    """search/candidates.jsonl's one row and the search stage's metrics of a fixed student."""
    from kdc import api

    api.search(config, "jetson", out, quiet=True)
    _chosen_student_rebuilds(config, out, "jetson")
    (row,) = [json.loads(line) for line in (out / "search" / "candidates.jsonl").open()]
    return row, json.loads((out / "manifest.json").read_text())["stages"]["search"]["metrics"]


@pytest.mark.parametrize("project", ["cnn", "bert"])
def test_fixed_student_has_a_predicted_latency(cnn_project, bert_project, tmp_path, project):
    """A fixed student that is a point of the search space (a CNN architecture, a transformer's
    layer count) is costed on the target like a search candidate, for the report and an early
    over-budget warning; one that is not (this tiny CNN's default rule also halves its stem,
    which the space keeps) has no prediction rather than a near one."""
    if project == "cnn":
        arch = {"architecture": {"stage_width": [1.0, 0.5]}}
        cfg = write_yaml(cnn_project.parent / "f.yaml", cnn_config(name="f", student=arch))
    else:
        cfg = write_yaml(bert_project.parent / "f.yaml", bert_config(name="f"))
    row, metrics = _fixed_search(cfg, tmp_path / "f")
    predicted = metrics["predicted_latency_ms"]
    assert 0 < row["predicted_latency_ms"] == predicted < metrics["teacher_predicted_latency_ms"]
    basis = json.loads((tmp_path / "f" / "search" / "student.json").read_text())["latency_model"]
    assert basis["model"] == "roofline-v1" and basis["target"] == "jetson-orin-nano-8gb"
    if project == "cnn":
        row, metrics = _fixed_search(cnn_project, tmp_path / "default")
        assert "predicted_latency_ms" not in row and "predicted_latency_ms" not in metrics
    else:  # predicted over a budget: said before distillation spends its time
        tight = write_yaml(
            bert_project.parent / "tight.yaml",
            bert_config(name="tight", constraints={"latency_budget_ms": predicted / 2}),
        )
        res = runner.invoke(
            app, ["search", str(tight), "--target", "jetson", "--out", str(tmp_path / "t")]
        )
        assert res.exit_code == 0, res.output
        assert "predicted over the" in res.output and "search.strategy: evolution" in res.output


def test_transformer_search_on_jetson(bert_project, tmp_path):
    from kdc import api

    cfg = write_yaml(
        bert_project.parent / "bevo.yaml",
        bert_config(
            name="bevo",
            search={
                "strategy": "evolution",
                "population": 4,
                "cycles": 4,
                "batch_size": 32,
                "proxies": ["params"],
            },
        ),
    )
    api.search(cfg, "jetson", tmp_path / "bevo", quiet=True)
    chosen = _chosen_student_rebuilds(cfg, tmp_path / "bevo", "jetson")
    rows = [json.loads(line) for line in (tmp_path / "bevo" / "search" / "candidates.jsonl").open()]
    assert all(set(r["proxies"]) == {"diswot", "params"} for r in rows)  # auto: diswot
    assert chosen["proxy"] == "diswot"
    assert chosen["precision"] == "int8" and chosen["budget_ms"] == 10.0  # the Orin Nano default
    arch = chosen["architecture"]
    assert arch["hidden_size"] % 16 == 0 and arch["intermediate_size"] % 16 == 0
    # students are costed with the [CLS]-only last layer they will be exported with, the teacher
    # with the full one it is exported with
    from kdc.deploy.estimate import predict_architecture
    from kdc.profiles import load_profile

    run = json.loads((tmp_path / "bevo" / "manifest.json").read_text())
    teacher_ms = run["stages"]["search"]["metrics"]["teacher_predicted_latency_ms"]
    teacher = api.open_run(cfg, "jetson", tmp_path / "bevo", quiet=True).teacher.architecture()
    full = predict_architecture(
        teacher, load_profile("jetson"), precision="int8", input_shapes=None
    )["p50_ms"]
    assert teacher_ms == pytest.approx(full)
    # the teacher fits the Orin Nano's 10 ms default: searched as without a budget (half-way
    # from the smallest student to the teacher), not choosing a student of the teacher's size
    assert chosen["search_limit_ms"] < teacher_ms
    assert chosen["predicted_latency_ms"] <= chosen["search_limit_ms"]
    assert chosen["architecture"]["params"] < teacher["params"]


def test_fixed_architecture_with_chosen_teacher_layers(bert_project, tmp_path):
    """`student.layers` (a list) picks which teacher layers the sized architecture keeps;
    a count that disagrees with num_hidden_layers is a config error."""
    from kdc import api

    student = {"layers": [0, 1], "architecture": {"num_hidden_layers": 2, "intermediate_size": 32}}
    cfg = write_yaml(bert_project.parent / "first.yaml", bert_config(name="first", student=student))
    api.search(cfg, "host", tmp_path / "first", quiet=True)
    chosen = _chosen_student_rebuilds(cfg, tmp_path / "first")
    assert chosen["spec"]["layers"] == [0, 1]
    assert chosen["architecture"]["intermediate_size"] == 32
    bad = {**student, "layers": [0, 1, 2]}
    cfg = write_yaml(bert_project.parent / "bad.yaml", bert_config(name="bad", student=bad))
    with pytest.raises(UserError, match="num_hidden_layers"):
        api.search(cfg, "host", tmp_path / "bad", quiet=True)


def test_proxy_batch_draws_rows_in_order_cuts_text_and_leaves_images():
    x = {"input_ids": np.arange(6)[:, None] * np.ones((6, 256), np.int64)}
    x["attention_mask"] = np.ones((6, 256), np.int64)
    y = np.arange(6)

    def rows_of(inputs):  # the encoder of the batch's rows alone
        return lambda idx: {k: v[idx] for k, v in inputs.items()}

    bx, by = proxy_batch(rows_of(x), y, 4, 0, 128)
    assert {k: v.shape for k, v in bx.items()} == {k: (4, 128) for k in x}
    assert list(by) == sorted(by) and list(bx["input_ids"][:, 0]) == list(by)
    again, _ = proxy_batch(rows_of(x), y, 4, 0, None)
    assert again["input_ids"].shape == (4, 256)
    # size capped at the rows there are
    assert list(proxy_batch(rows_of(x), y, 99, 1, None)[1]) == list(y)
    images = {"pixel_values": np.zeros((6, 3, 8, 8), np.float32)}
    assert proxy_batch(rows_of(images), y, 1, 0, 4)[0]["pixel_values"].shape == (1, 3, 8, 8)


def test_a_teacher_without_weights_is_warned(cnn_project, tmp_path):
    """An entrypoint teacher without teacher.weights has whatever weights the function gives:
    a warning, shown also with -q, and by validate."""
    cfg = write_yaml(tmp_path / "noweights.yaml", cnn_config(name="noweights", weights=None))
    res = runner.invoke(app, ["search", str(cfg), "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 0, res.output
    assert "teacher.weights is not set" in res.output and "kdc.models.cnn:small_cnn" in res.output
    assert res.output.count("teacher.weights is not set") == 1
    res = runner.invoke(app, ["validate", str(cfg)])  # the check before a run says so too
    assert res.exit_code == 0 and "warning: teacher.weights is not set" in res.output
    res = runner.invoke(
        app, ["search", str(cnn_project), "--out", str(tmp_path / "run2"), "--target", "jetson"]
    )
    assert res.exit_code == 0 and "teacher.weights is not set" not in res.output


def test_search_space_narrows_what_evolution_tries(cnn_project, tmp_path):
    res, out = _search(
        cnn_project, tmp_path, "narrow", search={"space": {"stage_width": {"min": 0.5}}}
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "search" / "candidates.jsonl").open()]
    assert rows and all(r["genes"][g] >= 0.5 for r in rows for g in r["genes"] if "width" in g)
    res, out = _search(cnn_project, tmp_path, "badspace", search={"space": {"layers": [2]}})
    assert res.exit_code == 2 and "badspace.yaml" in res.output
    assert "field 'search.space.layers'" in res.output and "use stage_width" in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_exhaustive_strategy_scores_the_whole_narrowed_space(cnn_project, tmp_path):
    res, out = _search(
        cnn_project,
        tmp_path,
        "exhaustive",
        search={"strategy": "exhaustive", "space": {"stage_width": [0.5, 1.0]}},
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "search" / "candidates.jsonl").open()]
    chosen = json.loads((out / "search" / "student.json").read_text())
    metrics = json.loads((out / "manifest.json").read_text())["stages"]["search"]["metrics"]
    assert chosen["strategy"] == metrics["strategy"] == "exhaustive"
    assert len(rows) == metrics["candidates_scored"] and metrics["candidates_left"] == 0
    assert len({json.dumps(r["genes"], sort_keys=True) for r in rows}) == len(rows) > 1
    assert chosen["genes"] == max(rows, key=lambda r: r["proxy"])["genes"]


def test_exhaustive_strategy_cut_short_says_how_much_it_left(cnn_project, tmp_path):
    res, out = _search(
        cnn_project, tmp_path, "cut", search={"strategy": "exhaustive", "time_budget_s": 1e-6}
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "manifest.json").read_text())["stages"]["search"]["metrics"]
    assert metrics["candidates_left"] > 0
    assert "search.time_budget_s 1e-06 ran out with " in " ".join(res.output.split())


def test_a_quick_calibration_is_named_as_a_smoke_test(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import kdc.deploy.calibrate as C
    from kdc.profiles import load_profile
    from kdc.stages.search import _note_uncalibrated

    monkeypatch.setenv("KDC_CONFIG_DIR", str(tmp_path / "config"))  # no saved calibration
    said: list[str] = []
    ctx = SimpleNamespace(profile=load_profile("host"), log=said.append)
    _note_uncalibrated(ctx)
    assert (
        len(said) == 1
        and "is uncalibrated (its assumed peaks put predictions up to ~3x off" in said[0]
    )
    monkeypatch.setattr(C, "saved_calibration", lambda profile: {"quick": True})
    said.clear()
    _note_uncalibrated(ctx)
    assert len(said) == 1 and "is a --quick calibration (three tiny models" in said[0]


@pytest.mark.parametrize(
    ("target", "asked", "predicted_at"),
    [("jetson", "fp32", "fp16"), ("jetson", "int8", "int8"), ("host", "fp32", "fp32")],
)
def test_latency_is_predicted_at_the_precision_the_shipped_engine_runs(target, asked, predicted_at):
    """quantize.precision fp32 on a TensorRT target ships an FP16 TensorRT engine
    (build_tensorrt.built_at), which verify predicts at FP16: search and latency-targeted
    pruning predicted every student at FP32, so a student whose FP16 engine fits the budget
    could be rejected (or no student fit at all)."""
    from types import SimpleNamespace

    from kdc.profiles import load_profile
    from kdc.stages.search import latency_precision

    ctx = SimpleNamespace(
        cfg=SimpleNamespace(quantize=SimpleNamespace(precision=asked)),
        profile=load_profile(target),
    )
    assert latency_precision(ctx) == predicted_at
