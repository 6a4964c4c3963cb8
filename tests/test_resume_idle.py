"""Settings a stage reads but cannot use for a config (how often distillation checkpoints, the
prune section while pruning is off, the INT8 settings, QAT's method among them, of a run that
makes no INT8 graph, the threads build times INT8 graphs on where `ptq: auto` does not pick one)
keep its outputs on `--resume`; `--dry-run --resume` plans what the resume then does."""

from __future__ import annotations

import re

import pytest
from tiny import config_of, write_yaml

from kdc import api
from kdc.config import parse_config
from kdc.pipeline import _stages, stage_hash
from kdc.profiles import load_profile
from kdc.stage_reads import config_reads

COMPUTING = ("search", "distill", "export", "build", "verify")


def _edit(cfg: dict, dotted: str, value: object) -> dict:
    section, key = dotted.split(".")
    return {**cfg, section: {**cfg.get(section, {}), key: value}}


def _changed(cfg: dict, dotted: str, value: object, target: str = "host") -> set[str]:
    """The stages whose input hash editing `dotted` to `value` changes."""
    profile = load_profile(target)

    def hashes(c: dict) -> dict[str, str]:
        parsed = parse_config(c, source="<test>")
        return {s.name: stage_hash(s, parsed, profile, "up", "in") for s in _stages()}

    before, after = hashes(cfg), hashes(_edit(cfg, dotted, value))
    return {s for s in before if before[s] != after[s]}


BASE = {
    "name": "t",
    "task": "image-classification",
    "teacher": {"name": "resnet18"},
    "data": {"source": "sklearn:digits"},
}
FP32 = _edit(BASE, "quantize.precision", "fp32")
PRUNED = _edit(BASE, "prune.enabled", True)
QAT = _edit(BASE, "quantize.method", "qat")

IDLE = [  # (config, edit, value): none changes what a stage computes
    (BASE, "distill.checkpoint", False),
    (BASE, "prune.ratio", 0.6),
    (BASE, "prune.target_latency_ms", 2.0),  # pruning to a latency reads how it is predicted
    (BASE, "prune.importance", "taylor"),
    (FP32, "quantize.calibration_size", 32),
    (FP32, "quantize.ptq", "nncf"),
    (FP32, "quantize.max_int8_loss", 0.1),
    (_edit(BASE, "quantize.precision", "fp16"), "quantize.calibration", "entropy"),
    (FP32, "quantize.method", "qat"),  # QAT makes an INT8 graph: not run for FP32 (warned)
    (_edit(BASE, "quantize.precision", "fp16"), "quantize.method", "qat"),
]
USED = [  # (config, edit, value, the stages that compute from it)
    (BASE, "distill.epochs", 1, {"distill"}),
    (PRUNED, "prune.ratio", 0.6, {"distill"}),
    (PRUNED, "prune.target_latency_ms", 2.0, {"distill"}),
    (BASE, "prune.enabled", True, {"distill"}),
    (BASE, "quantize.calibration_size", 32, {"build"}),  # int8: the INT8 graph's rows
    (BASE, "quantize.ptq", "nncf", {"build"}),
    (FP32, "quantize.precision", "fp16", {"search", "build"}),
    (BASE, "quantize.method", "qat", {"distill", "build"}),  # int8: QAT trains in distill
    (QAT, "quantize.precision", "fp16", {"search", "distill", "build"}),  # and no longer runs
    (BASE, "verify.threads", 2, {"build", "verify"}),  # build times `ptq: auto`'s INT8 graphs
    (FP32, "verify.threads", 2, {"verify"}),  # no INT8 graph: build times none
    (QAT, "verify.threads", 2, {"verify"}),  # QAT's graph ships: none timed
    (_edit(BASE, "quantize.ptq", "nncf"), "verify.threads", 2, {"verify"}),
]


@pytest.mark.parametrize(("cfg", "dotted", "value"), IDLE, ids=[e[1] for e in IDLE])
def test_editing_a_setting_a_stage_does_not_use_keeps_its_hash(cfg, dotted, value):
    for target in ("host", "jetson"):
        assert _changed(cfg, dotted, value, target) == {"report"}, (dotted, target)


@pytest.mark.parametrize(
    ("cfg", "dotted", "value", "stages"), USED, ids=[f"{e[1]}={e[2]}" for e in USED]
)
def test_editing_a_setting_a_stage_uses_still_changes_its_hash(cfg, dotted, value, stages):
    assert _changed(cfg, dotted, value) == stages | {"report"}


def test_runs_of_default_settings_hash_as_before_idle_settings_were_known():
    """Idle settings are hashed at their defaults, not left out: a run recorded before, of the
    default settings (or FP32 with default INT8 settings), keeps its input hashes."""
    for cfg in (BASE, FP32):
        parsed = parse_config(cfg, source="<test>")
        for stage in _stages():
            reads = stage.reads(parsed)
            assert config_reads(parsed, reads, stage.idle(parsed)) == config_reads(parsed, reads)


def _resume(path, run, capsys) -> tuple[dict[str, str], set[str]]:
    """What `--dry-run --resume` plans for each stage, and the stages the resume then skips."""
    plan = api.plan(path, "host", run, resume=True)["resume"]
    capsys.readouterr()
    api.compress(path, "host", run, resume=True)
    out = capsys.readouterr().out
    return plan, set(re.findall(r"✓ (\w+): up to date, skipped", out))


def _agree(plan: dict[str, str], skipped: set[str]) -> None:
    """The stages the plan skips are skipped, those it runs run; one it runs unless the stage
    before makes the same outputs may go either way."""
    assert {s for s, v in plan.items() if v == "up to date, skipped"} <= skipped, (plan, skipped)
    assert not {s for s, v in plan.items() if v == "runs"} & skipped, (plan, skipped)


def test_the_resume_plan_and_the_resume_agree(cnn_project, tmp_path, capsys):
    """An FP32 run: its checkpointing, its pruning settings (pruning off) and its INT8 settings
    edited, the plan and the resume redo the report alone; a build setting edited, both redo
    the build."""
    cfg = _edit(config_of(cnn_project), "distill.epochs", 1)
    cfg = _edit(cfg, "quantize.precision", "fp32")
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    for dotted, value in [
        ("distill.checkpoint", False),
        ("prune.ratio", 0.6),
        ("quantize.calibration_size", 16),
        ("quantize.ptq", "onnxruntime"),
    ]:
        cfg = _edit(cfg, dotted, value)
    write_yaml(path, cfg)
    plan, skipped = _resume(path, run, capsys)
    assert {s for s, v in plan.items() if v == "up to date, skipped"} == set(COMPUTING), plan
    assert skipped == set(COMPUTING)
    write_yaml(path, _edit(cfg, "build.softmax_floor", False))
    plan, skipped = _resume(path, run, capsys)
    assert plan["build"] == "runs" and plan["export"] == "up to date, skipped", plan
    _agree(plan, skipped)


def test_a_stage_whose_own_settings_changed_is_planned_to_run_whatever_comes_before(
    cnn_project, tmp_path, capsys
):
    """Search and verify settings edited: the plan runs search, and verify whatever the search
    makes (its own inputs changed), not "unless search makes the same outputs as before"; the
    stages between them may go either way."""
    cfg = _edit(_edit(config_of(cnn_project), "distill.epochs", 1), "quantize.precision", "fp32")
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    cfg = _edit(_edit(cfg, "search.latency_margin", 0.2), "verify.iterations", 21)
    write_yaml(path, cfg)
    plan, skipped = _resume(path, run, capsys)
    unless = "runs, unless {} makes the same outputs as before"
    assert plan == {
        "search": "runs",
        **dict.fromkeys(("distill", "export", "build"), unless.format("search")),
        "verify": "runs",
        "report": "runs",  # it records the config's hash
    }, plan
    _agree(plan, skipped)
    assert skipped == {"distill", "export", "build"}
