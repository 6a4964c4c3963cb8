"""Search stage: choose the student architecture, by a fixed rule (`search.strategy: fixed`) or
ranked with a training-free proxy among students whose predicted latency on the target fits the
budget, found by aging evolution (`evolution`) or by scoring them all (`exhaustive`). Writes
search/candidates.jsonl, search/student.json and, when searched, search/pareto.png."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kdc.compress.student import fixed_student_spec
from kdc.data.batching import cut_positions
from kdc.errors import NoStudentFits, UserError
from kdc.pipeline import EXAMPLE_ROWS, Context, StageOutput
from kdc.rundir import atomic_path, json_number, write_json, write_jsonl

if TYPE_CHECKING:
    from kdc.compress.space import Space
    from kdc.models.base import ModelAdapter


def run(ctx: Context) -> StageOutput:
    from kdc.preflight_export import check_loaded_teacher

    # an earlier search's list of candidates over its budget is not this one's
    (ctx.run / "search" / "rejected.jsonl").unlink(missing_ok=True)
    check_loaded_teacher(ctx)  # not found at the export stage, after the distillation
    return STRATEGIES[ctx.cfg.search.strategy](ctx)


def _fixed(ctx: Context) -> StageOutput:
    space = None
    if ctx.cfg.student.layers is not None and ctx.teacher.family != "transformer":
        raise UserError(
            "a CNN student keeps a share of channels, not teacher layers",
            source=ctx.cfg.source_file,
            field="student.layers",
            fix="remove it; set student.width, or student.architecture's stage_depth",
        )
    if ctx.cfg.student.architecture:
        space = _space(ctx)
        spec = space.decode(space.from_architecture(ctx.cfg.student.architecture)).spec
        layers = ctx.cfg.student.layers
        if isinstance(layers, list) and ctx.teacher.family == "transformer":
            # which teacher layers to keep, instead of evenly spaced ones
            keep = fixed_student_spec(ctx.teacher, ctx.cfg.student)["layers"]
            if len(keep) != len(spec.get("layers", [])):
                raise UserError(
                    f"student.layers keeps {len(keep)} layers but student.architecture has "
                    f"num_hidden_layers {len(spec.get('layers', []))}",
                    source=ctx.cfg.source_file,
                    field="student.layers",
                    fix="give as many layer indices as num_hidden_layers",
                )
            spec["layers"] = keep
    else:
        spec = fixed_student_spec(ctx.teacher, ctx.cfg.student)
    student = build_student(ctx, spec)
    arch = student.architecture()
    row = {"architecture": arch, "spec": spec, "params": student.params(), "chosen": True}
    metrics: dict[str, Any] = {
        "strategy": "fixed",
        "candidates_scored": 1,
        "student_params": student.params(),
    }
    ctx.log(f"  student: {spec} ({student.params():,} params, teacher {ctx.teacher.params():,})")
    predicted = _fixed_prediction(ctx, arch, space)
    if predicted is not None:
        precision = latency_precision(ctx)
        row["predicted_latency_ms"] = metrics["predicted_latency_ms"] = predicted["student"]
        metrics["teacher_predicted_latency_ms"] = predicted["teacher"]
        ctx.log(
            f"  predicted {predicted['student']:.4g} ms on {ctx.profile.name} "
            f"({precision}, batch {ctx.cfg.verify.batch}; teacher at {precision}: "
            f"{predicted['teacher']:.4g} ms{_teacher_note(precision)})"
        )
        _note_uncalibrated(ctx)
        budget = ctx.cfg.constraints.latency_budget_ms or ctx.profile.defaults.latency_budget_ms
        if budget and predicted["student"] > budget:
            ctx.warn(
                f"the fixed student is predicted over the {budget:g} ms latency budget; a "
                "smaller student.architecture or search.strategy: evolution finds one that fits"
            )
    cands = ctx.run / "search" / "candidates.jsonl"
    out = write_json(
        ctx.run / "search" / "student.json",
        {"spec": spec, "architecture": arch, "strategy": "fixed"}
        | (
            {"predicted_latency_ms": predicted["student"], "latency_model": predicted["basis"]}
            if predicted
            else {}
        ),
    )
    write_jsonl(cands, [row])
    return StageOutput([out, cands], metrics)


def _note_uncalibrated(ctx: Context) -> None:
    from kdc.deploy.calibrate import saved_calibration

    if saved_calibration(ctx.profile).get("quick"):
        ctx.log(
            f"  note: {ctx.profile.name}'s latency model is a --quick calibration (three tiny "
            "models, a smoke test): calibrate it again without --quick for predictions to rely on"
        )
    elif ctx.profile.measurable and ctx.profile.latency_model.source.startswith("defaults"):
        ctx.log(
            f"  note: {ctx.profile.name}'s latency model is uncalibrated (its assumed peaks put "
            "predictions up to ~3x off, mostly too slow): run `kdc calibrate --target "
            f"{ctx.profile.name} --threads N` once, N as verify.threads"
        )


BASIS = (  # the fields of a prediction that say how it was made
    "kind",
    "model",
    "calibrated_from",
    "predictor_sha256",
    "target",
    "precision",
    "batch",
    "input_shape",
    "padding",
)


def prediction_basis(pred: dict) -> dict:
    """How a prediction was made (latency model, calibration, conditions), without its figures:
    the report labels the search's predicted latencies with it."""
    return {k: pred[k] for k in BASIS if k in pred}


def _fixed_prediction(
    ctx: Context, arch: dict[str, Any], space: Space | None = None
) -> dict[str, Any] | None:
    """Predicted p50 (ms) on the target of the fixed student and the teacher, by the latency model
    the search uses, when the student is exactly a point of the search space (a transformer's
    layer count, any `student.architecture`; a CNN width rule's student rarely is); None
    otherwise (`space`: the one `_fixed` built, if it did). Advisory: a teacher the space cannot
    describe gets no prediction, not an error."""
    try:
        space = space if space is not None else _space(ctx)
        if ctx.cfg.student.architecture:
            genes = space.from_architecture(ctx.cfg.student.architecture)
        elif ctx.teacher.family == "transformer":
            genes = space.from_architecture({"num_hidden_layers": arch["num_hidden_layers"]})
        else:
            genes = space.from_architecture(
                {"stage_width": [ctx.cfg.student.width] * len(space.stages)}
            )
        cand = space.decode(genes)
        if any(arch.get(k) != v for k, v in cand.architecture.items()):  # not a point of it
            ctx.log(
                "  no latency prediction here for the fixed student (not a point of the search "
                f"space on {ctx.profile.name}); verify predicts its exported graph"
            )
            return None
        predict = _predictor(ctx, space)
        pred = predict(cand.cost)
        return {
            "student": pred["p50_ms"],
            "teacher": _teacher_prediction(space, predict)["p50_ms"],
            "basis": prediction_basis(pred),
        }
    except Exception as e:  # noqa: BLE001 - the prediction is optional, the run goes on
        ctx.log(f"  no latency prediction for the fixed student: {type(e).__name__}: {e}")
        return None


def _predictor(ctx: Context, space) -> Callable[[dict], dict]:
    """The latency prediction of an architecture cost dict on the target, at the search's
    precision and verify's batch (on the DLA core of build.dla_core where one is built)."""
    from kdc.deploy.estimate import predict_architecture

    precision, batch = latency_precision(ctx), ctx.cfg.verify.batch
    shapes, padding = space.input_shapes(batch), ctx.latency_padding()
    return lambda cost: predict_architecture(
        cost,
        ctx.profile,
        precision=precision,
        batch=batch,
        input_shapes=shapes,
        padding=padding,
        dla_core=ctx.dla_core,
    )


def _teacher_note(precision: str) -> str:
    """What a teacher prediction at the students' `precision` is, where the report times the
    teacher at another (its FP32 engine)."""
    return "" if precision == "fp32" else "; the report's teacher row is its fp32 engine"


def _teacher_prediction(space, predict: Callable[[dict], dict]) -> dict:
    """The teacher's prediction (p50_ms and how it was made), exported as it is (its full last
    layer)."""
    cost = space.decode(space.teacher_genes).cost
    if "cls_only_last_layer" in cost:
        cost = {**cost, "cls_only_last_layer": False}
    return predict(cost)


def _space(ctx: Context) -> Space:
    from kdc.compress.space import space_for

    return space_for(
        ctx.teacher,
        ctx.encode("train", EXAMPLE_ROWS),
        ctx.profile.defaults.channel_divisor,
        cls_only=ctx.cfg.export.cls_only_last_layer,
    )


def _proxy_names(ctx: Context, proxy: str) -> list[str]:
    from kdc.compress.proxies import PROXIES

    cfg = ctx.cfg.search  # names checked before the run (kdc.preflight)
    return list(dict.fromkeys([proxy, *(PROXIES if cfg.proxies == "all" else cfg.proxies)]))


def latency_precision(ctx: Context) -> str:
    """The engine precision latency is predicted at: the config's (the target's default if it
    lacks it), as a TensorRT target's engine is built (FP32 as FP16, `built_at`)."""
    from kdc.stages.build_tensorrt import built_at

    p = ctx.cfg.quantize.precision
    p = p if p in ctx.profile.runtime.precisions else ctx.profile.default_precision
    return built_at(p) if "tensorrt" in ctx.profile.runtime.engines else p


def _budget(ctx: Context, smallest_ms: float, teacher_ms: float) -> tuple[float, str, bool]:
    """The latency budget, where it came from, and whether verify holds the engine to it (a
    constraint); without one, `latency_fraction` of the way from the smallest student's
    predicted latency to the teacher's."""
    if ctx.cfg.constraints.latency_budget_ms:
        return ctx.cfg.constraints.latency_budget_ms, "constraints.latency_budget_ms", True
    if ctx.profile.defaults.latency_budget_ms:
        return ctx.profile.defaults.latency_budget_ms, f"{ctx.profile.name} default", True
    f = ctx.cfg.search.latency_fraction
    return (
        smallest_ms + f * (teacher_ms - smallest_ms),
        f"search.latency_fraction {f:g} of the way from the smallest student to the teacher",
        False,
    )


def proxy_batch(
    encode: Callable[[np.ndarray], dict[str, np.ndarray]],
    y: np.ndarray,
    size: int,
    seed: int,
    max_tokens: int | None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The scoring batch (inputs, labels): `size` training rows drawn under `seed`, in row order,
    encoded by `encode` (of their indices: not every training row is tokenized), text inputs
    cut to their first `max_tokens` positions."""
    idx = np.sort(np.random.default_rng(seed).choice(len(y), min(size, len(y)), replace=False))
    rows = encode(idx)
    return (rows if max_tokens is None else cut_positions(rows, max_tokens)), y[idx]


def _searched(ctx: Context) -> StageOutput:
    from kdc.compress.proxies import PROXIES, resolve_proxy
    from kdc.compress.search import SEARCHERS, pareto_flags
    from kdc.compress.student import derive_student, random_init

    started = time.perf_counter()
    cfg, teacher = ctx.cfg.search, ctx.teacher
    if not len(ctx.dataset.train.labels):
        raise UserError(
            f"search.strategy {cfg.strategy} scores students on labelled rows; task "
            f"{ctx.cfg.task} has no labels",
            source=ctx.cfg.source_file,
            field="search.strategy",
            fix="use strategy fixed with student.architecture (or student.layers)",
        )
    proxy = resolve_proxy(cfg.proxy)
    names = _proxy_names(ctx, proxy)
    y = ctx.dataset.train.labels
    bx, by = proxy_batch(
        partial(ctx.encode, "train"), y, cfg.batch_size, ctx.cfg.seed, cfg.proxy_max_tokens
    )
    example = ctx.encode("train", EXAMPLE_ROWS)  # what a student is derived (traced) on
    divisor = ctx.profile.defaults.channel_divisor
    space = _space(ctx)
    space.restrict(cfg.space)
    precision, batch = latency_precision(ctx), ctx.cfg.verify.batch
    predict = _predictor(ctx, space)
    predictions: dict[str, dict] = {}

    def latency(c) -> float:
        predictions[c.key] = predict(c.cost)
        return predictions[c.key]["p50_ms"]

    dla = "" if ctx.dla_core is None else f", DLA core {ctx.dla_core}"  # where it predicts
    teacher_pred = _teacher_prediction(space, predict)
    teacher_ms = teacher_pred["p50_ms"]
    smallest_ms = latency(space.decode(space.smallest()))
    budget, budget_source, constraint = _budget(ctx, smallest_ms, teacher_ms)
    limit, margin_note = budget, ""
    if constraint and cfg.latency_margin:
        limit = budget * (1 - cfg.latency_margin)
        margin_note = f" ({budget:.4g} ms less search.latency_margin {cfg.latency_margin:g})"
    if teacher_ms <= limit:  # no latency pressure: the best-scoring student is the teacher's size
        if ctx.cfg.constraints.latency_budget_ms:
            ctx.warn(
                f"the teacher (predicted {teacher_ms:.4g} ms) already fits "
                f"constraints.latency_budget_ms {budget:.4g} ms on {ctx.profile.name}: the search "
                "may choose a student as large as the teacher; set a lower budget to compress"
            )
        else:  # the target's default budget: search as without one (it stays verify's limit)
            f = cfg.latency_fraction
            limit = smallest_ms + f * (teacher_ms - smallest_ms)
            margin_note = (
                f" (the teacher, predicted {teacher_ms:.4g} ms, fits the {budget:.4g} ms budget: "
                f"search.latency_fraction {f:g} of the way from the smallest student to it)"
            )
    rows: dict[str, dict[str, Any]] = {}

    def score(c) -> float:
        student = derive_student(teacher, c.spec, example, divisor)
        if cfg.init == "random":
            random_init(student, ctx.cfg.seed)
        vals = {n: float(PROXIES[n](teacher, student, bx, by)) for n in names}
        rows[c.key] = {
            "architecture": student.architecture(),
            "genes": c.genes,
            "spec": c.spec,
            "params": student.params(),
            "flops": predictions[c.key]["flops"],
            "proxies": {n: json_number(v) for n, v in vals.items()},
        }
        return vals[proxy]

    ctx.log(
        f"  space: {space.size:,} students; budget {budget:.4g} ms ({budget_source}), "
        f"searched under {limit:.4g} ms{margin_note}; "
        f"teacher predicted {teacher_ms:.4g} ms on {ctx.profile.name} at {precision}, batch "
        f"{batch}{_teacher_note(precision)}"
    )
    _note_uncalibrated(ctx)
    facts = {  # the search's settings, in its metrics and in a failed search's report
        "strategy": cfg.strategy,
        "proxy": proxy,
        "budget_ms": budget,
        "budget_source": budget_source,
        "search_limit_ms": limit,
        "teacher_predicted_latency_ms": teacher_ms,
    }
    steps = space.size if cfg.strategy == "exhaustive" else cfg.population + cfg.cycles
    with ctx.progress("searching", steps) as advance:
        try:
            result = SEARCHERS[cfg.strategy](
                space,
                score,
                latency,
                limit,
                population=cfg.population,
                cycles=cfg.cycles,
                sample_size=cfg.sample_size,
                time_budget_s=cfg.time_budget_s,
                seed=ctx.cfg.seed,
                progress=lambda s: advance(**({"ms": s.latency_ms, "proxy": s.score} if s else {})),
                where=f"{margin_note} on {ctx.profile.name} ({precision}, batch {batch}{dla})",
                other_fix=("" if ctx.dla_core is None else ", or drop build.dla_core for the GPU")
                + (", or loosen search.space" if cfg.space else ""),
            )
        except NoStudentFits as e:  # what was tried, for the run directory a CI job uploads
            from kdc.stages.report import write_no_fit_report

            tried = ctx.run / "search" / "rejected.jsonl"
            rows_tried = [{"architecture": a, "predicted_latency_ms": ms} for a, ms in e.rejected]
            write_jsonl(tried, rows_tried)
            search = {
                **facts,
                "candidates_rejected": len(rows_tried),
                "closest": rows_tried[:3],
                "rejected": str(tried.relative_to(ctx.run.root)),
            }
            teacher_pred = {**teacher_pred, "engine": ctx.profile.modelled_engine}
            wall_s = round(time.perf_counter() - started, 2)
            files = write_no_fit_report(ctx, search, e.rejected[0][1], str(e), teacher_pred, wall_s)
            raise NoStudentFits(
                f"{e} (every candidate tried: {tried}; report: {files[0]})", e.rejected
            ) from None
    flags = pareto_flags([(s.latency_ms, s.score) for s in result.scored])
    table = [
        {
            **rows[s.candidate.key],
            "predicted_latency_ms": s.latency_ms,
            "proxy": json_number(s.score),
            "pareto": f,
            "chosen": s is result.best,
        }
        for s, f in zip(result.scored, flags, strict=True)
    ]
    best = rows[result.best.candidate.key]
    cands = write_jsonl(ctx.run / "search" / "candidates.jsonl", table)
    plot = plot_search(table, budget, proxy, ctx.run / "search" / "pareto.png")
    out = write_json(
        ctx.run / "search" / "student.json",
        {
            "spec": best["spec"],
            "architecture": best["architecture"],
            "strategy": cfg.strategy,
            "proxy": proxy,
            "genes": best["genes"],
            "init": cfg.init,
            "predicted_latency_ms": result.best.latency_ms,
            "latency_model": prediction_basis(predictions[result.best.candidate.key]),
            "budget_ms": budget,
            "budget_source": budget_source,
            "search_limit_ms": limit,
            "precision": precision,
            "batch": batch,
        },
    )
    rate = len(table) / max(result.wall_s, 1e-9)
    if result.left:
        ctx.warn(
            f"search.time_budget_s {cfg.time_budget_s:g} ran out with {result.left:,} of the "
            f"space's {space.size:,} students not examined (the last of its first gene, "
            f"{next(iter(space.dims))}, among them); raise it or narrow search.space"
        )
    ctx.log(
        f"  scored {len(table)} students ({len(result.rejected)} over budget rejected) in "
        f"{result.wall_s:.1f} s ({rate:.2f}/s); "
        f"chosen {result.best.candidate.label}: {proxy} "
        f"{result.best.score:.4g}, predicted {result.best.latency_ms:.4g} ms, "
        f"{best['params']:,} params (teacher {teacher.params():,})"
    )
    return StageOutput(
        [out, cands, plot],
        {
            **facts,
            "candidates_scored": len(table),
            "candidates_rejected": len(result.rejected),
            "cycles": result.cycles,
            "candidates_left": result.left,
            "predicted_latency_ms": result.best.latency_ms,
            "student_params": best["params"],
            "search_wall_s": round(result.wall_s, 2),
            "candidates_per_s": round(rate, 2),
            "torch_threads": torch.get_num_threads(),
        },
    )


def plot_search(rows: list[dict], budget_ms: float, proxy: str, path: Path) -> Path:
    """Predicted latency against proxy score: candidates, Pareto front, chosen, budget line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = [r for r in rows if r["proxy"] is not None]
    ax.scatter(
        [r["predicted_latency_ms"] for r in pts],
        [r["proxy"] for r in pts],
        s=18,
        color="0.6",
        label="candidates",
    )
    front = sorted((r for r in pts if r["pareto"]), key=lambda r: r["predicted_latency_ms"])
    ax.plot(
        [r["predicted_latency_ms"] for r in front],
        [r["proxy"] for r in front],
        "-o",
        color="tab:blue",
        markersize=4,
        label="Pareto front",
    )
    for r in pts:
        if r["chosen"]:
            ax.scatter(
                [r["predicted_latency_ms"]],
                [r["proxy"]],
                s=160,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=2,
                label="chosen",
                zorder=5,
            )
    ax.axvline(
        budget_ms, color="tab:red", linestyle="--", linewidth=1, label=f"budget {budget_ms:.3g} ms"
    )
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(f"proxy: {proxy} (higher is better)")
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def build_student(ctx: Context, spec: dict) -> ModelAdapter:
    """The student adapter for `spec`, initialised from the teacher."""
    from kdc.compress.student import derive_student

    return derive_student(
        ctx.teacher, spec, ctx.encode("train", EXAMPLE_ROWS), ctx.profile.defaults.channel_divisor
    )


STRATEGIES = {"fixed": _fixed, "evolution": _searched, "exhaustive": _searched}
