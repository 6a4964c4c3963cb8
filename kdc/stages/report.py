"""Report stage: assemble report.json per REPORT.md, evaluate constraints, write md/png/html."""

from __future__ import annotations

import time
from pathlib import Path

from kdc import __version__
from kdc.pipeline import Context, StageOutput
from kdc.rundir import library_versions, read_json, read_jsonl


def _target(ctx: Context) -> dict:
    p = ctx.profile
    return {
        "name": p.name,
        "kind": p.kind,
        "measurable": p.measurable,
        "profile_sha256": p.sha256(),
        "latency_model": p.latency_model.source,
    }


# what run.wall_s is (report.md says "sum of its stages"); run.invocation.wall_s is the real time
STAGES_SUM = (
    "sum of the stages' wall_s (run.stages), each of its last run, in this invocation or an "
    "earlier one; the report stage's own is not in it"
)


def invocation(ctx: Context, stage: str) -> dict:
    """The wall time of the kdc command writing the report, from the start of its stages to
    stage `stage` writing it, and the stages it ran (on a resume, those it skipped took it no
    time); no time where no stage was started through the pipeline."""
    return {
        "wall_s": None if ctx.started is None else round(time.perf_counter() - ctx.started, 2),
        "wall_s_is": f"this kdc command, from the start of its stages to the {stage} stage "
        "writing this report; stages it did not run took it no time",
        "stages_run": list(dict.fromkeys([*ctx.ran, stage])),
    }


def _search_section(ctx: Context) -> dict:
    rows = read_jsonl(ctx.run / "search" / "candidates.jsonl")
    rec = ctx.run.stage("search") or {}
    chosen = read_json(ctx.run / "search" / "student.json")
    pareto = [r for r in rows if r.get("pareto")] or [r for r in rows if r.get("chosen")]
    return {
        "strategy": chosen.get("strategy", "fixed"),
        "proxy": chosen.get("proxy"),
        "candidates_scored": len(rows),
        "latency_model": chosen.get("latency_model"),  # how every predicted_latency_ms was made
        "wall_s": rec.get("wall_s"),
        "pareto": [
            {k: r.get(k) for k in ("architecture", "proxy", "predicted_latency_ms")} for r in pareto
        ],
        "candidates": rows,
    }


def assemble(ctx: Context) -> dict:
    """The report.json document (without constraints)."""
    m = read_json(ctx.run / "verify" / "metrics.json")
    manifest = ctx.run.manifest()
    stages = manifest.get("stages", {})
    cfg = ctx.cfg
    started = min((s.get("started", "") for s in stages.values() if s.get("started")), default=None)
    precision = cfg.quantize.precision
    return {
        "kdc_version": __version__,
        "run": {
            "name": cfg.name,
            "config_sha256": cfg.sha256(),  # this invocation's config, as the manifest's
            "started": started,
            "wall_s": round(sum(s.get("wall_s", 0) for s in stages.values()), 2),
            "wall_s_is": STAGES_SUM,
            "invocation": invocation(ctx, "report"),
            "seed": cfg.seed,
            "libraries": library_versions(),
            "trust_remote_code": cfg.teacher.trust_remote_code,
            "stages": {
                **{
                    k: {"wall_s": v.get("wall_s"), "status": v.get("status")}
                    for k, v in stages.items()
                },
                # this stage: done once report.json (written last) can be read; its wall time is
                # the manifest's
                "report": {"wall_s": None, "status": "done"},
            },
        },
        "task": cfg.task,
        "data": m.get("data"),
        "target": _target(ctx),
        "teacher": m["teacher"],
        "student": {
            **m["student"],
            "precision": precision,
            "distill": (stages.get("distill") or {}).get("metrics", {}),
            "export": (stages.get("export") or {}).get("metrics", {}),
            "pruning": read_json(ctx.run / "distill" / "student.json").get("pruning"),
        },
        "search": _search_section(ctx),
        "engines": mark_shipped(
            labelled_backend_timings(m["engines"]), precision, ctx.profile.runtime.engines
        ),
        "warnings": run_warnings(ctx, m.get("data"), m["teacher"].get("warnings")),
    }


def run_warnings(ctx: Context, data: dict | None, teacher: list[str] | None = None) -> list[str]:
    """What the run assumed or left unused, as printed when it started: the config's and the
    target's notes, what reading the data assumed (its summary's `notes`), and verify's notes
    on the teacher's accuracy (`teacher`)."""
    from kdc.preflight import config_warnings, target_warnings

    notes = [*config_warnings(ctx.cfg), *target_warnings(ctx.cfg, ctx.profile)]
    return list(dict.fromkeys([*notes, *((data or {}).get("notes") or []), *(teacher or [])]))


def write_no_fit_report(
    ctx: Context,
    search: dict,
    closest_ms: float,
    why: str,
    teacher_latency: dict,
    wall_s: float,
) -> list[Path]:
    """report.json (and .md/.png/.html) of a run whose search found no student under the latency
    budget: FAILED on its latency constraint (the fastest candidate's prediction), no engine,
    the search's figures in `search`, the teacher's prediction by the search's latency model
    (`teacher_latency`, at the searched precision) as its `target_latency` (and its FLOPs), the
    search's `wall_s` as the run's and the search's, as REPORT.md has them. Recorded as the
    report stage's failed outputs, so the next stage to run removes it as it removes any
    earlier report."""
    from kdc.deploy.report import write_report

    manifest = ctx.run.manifest()
    report = {
        "kdc_version": __version__,
        "run": {
            "name": ctx.cfg.name,
            "config_sha256": ctx.cfg.sha256(),
            "started": (manifest.get("stages", {}).get("search") or {}).get("started"),
            "wall_s": wall_s,
            "wall_s_is": "the search stage's, the one stage that ran",
            "invocation": invocation(ctx, "search"),
            "seed": ctx.cfg.seed,
            "libraries": library_versions(),
            "stages": {"search": {"status": "failed"}},
        },
        "task": ctx.cfg.task,
        "data": (data := ctx.dataset.summary()),
        "target": _target(ctx),
        "teacher": {
            "params": ctx.teacher.params(),
            "flops": teacher_latency.get("flops"),
            "target_latency": teacher_latency,
        },
        "student": None,
        "search": {**search, "candidates_scored": 0, "wall_s": wall_s, "pareto": []},
        "engines": [],
        "constraints": [
            {
                "name": "latency_p99_ms",
                "limit": search["budget_ms"],
                "value": closest_ms,
                "source": "predicted",
                "pass": False,
                "reason": f"no student fits: {why}",
            }
        ],
        "passed": False,
        "failure": {"stage": "search", "error": why},
        "warnings": run_warnings(ctx, data),
    }
    files = write_report(report, ctx.run.root)
    ctx.run.mark_failed("report", "the search found no student under the budget", files)
    return files


# what an earlier build left out of ptq: auto's timings (`labelled_backend_timings`)
TIMING_NOT_RECORDED = "device and batch not recorded (run build again)"
# the report's own version, in its input hash from 2 on (`Stage.versions`): a `--resume` of a run
# reported by an earlier version writes its report again. 2: an earlier build's bare ptq: auto
# timings labelled; 3: a measured p99 of fewer than check_noise.MIN_RUNS runs not judged
VERSION = 3


def labelled_backend_timings(engines: list[dict]) -> list[dict]:
    """`ptq: auto`'s timings as the measured latency objects build now records: a run built by
    an earlier kdc keeps a bare `p50_ms` per backend in `quantization.backend_choice` (with the
    threads and protocol beside it, or neither) until build runs again. What it states is kept
    (measured by ONNX Runtime, INT8, threads, protocol); the device and batch it does not are
    said to be unknown (`details`), never guessed."""
    for e in engines:
        choice = (e.get("quantization") or {}).get("backend_choice")
        if not isinstance(choice, dict) or not isinstance(choice.get("p50_ms"), dict):
            continue
        bare = choice.pop("p50_ms")
        beside = {k: choice.pop(k) for k in ("threads", "protocol") if k in choice}
        choice.setdefault(
            "latency",
            {
                b: {
                    "kind": "measured",
                    "engine": "onnxruntime",
                    "precision": "int8",
                    "p50_ms": p50,
                    **beside,
                    "details": TIMING_NOT_RECORDED,
                }
                for b, p50 in bare.items()
            },
        )
    return engines


def mark_shipped(engines: list[dict], precision: str, target_engines: list[str]) -> list[dict]:
    """Flag the engine that ships: the target's preferred engine kind (profile order) at the
    chosen precision (TensorRT's: FP16 for FP32, `built_at`), if it was built (here or on the
    device) or bundled."""
    from kdc.stages.build_tensorrt import built_at

    for kind in target_engines:
        at = built_at(precision) if kind == "tensorrt" else precision
        for e in engines:
            if (
                e.get("engine") == kind
                and e.get("precision") == at
                and e.get("status") in ("built", "bundle")
            ):
                e["ships"] = True
                return engines
    return engines


def run(ctx: Context) -> StageOutput:
    from kdc.deploy.constraints import evaluate_constraints, passed
    from kdc.deploy.report import console_summary, write_report

    report = assemble(ctx)
    rows = evaluate_constraints(
        report, ctx.cfg.constraints.model_dump(), ctx.profile.defaults.model_dump()
    )
    report["constraints"] = rows
    report["passed"] = passed(rows)
    files = write_report(report, ctx.run.root)
    ctx.console.print(console_summary(report, brief=ctx.quiet))
    return StageOutput(files, {"passed": report["passed"]})
