"""The `kdc` commands that work on one model, report or target rather than a run: bench,
estimate, lint, check and calibrate (registered on the app in kdc.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kdc.cli_errors import err, handled, out
from kdc.cli_options import Batch, Json, OnnxModel, Report, Shapes, Target
from kdc.errors import UserError


def _threads(threads: int | None) -> int | None:
    """--threads as given (None: all usable CPUs); below 1 is a UserError, not "all"."""
    if threads is not None and threads < 1:
        raise UserError(
            f"{threads} is not a thread count",
            field="--threads",
            fix="pass 1 or more, or leave it out to use all usable CPUs",
        )
    return threads


@handled
def bench(
    model: OnnxModel,
    engine: Annotated[
        str, typer.Option(help="onnxruntime (tensorrt: use bundle/bench.sh on the device).")
    ] = "onnxruntime",
    batch: Batch = None,
    threads: Annotated[
        int | None, typer.Option(help="Intra-op threads (default: all usable).")
    ] = None,
    shape: Shapes = None,
    iterations: Annotated[int, typer.Option(help="Timed calls, at least.")] = 200,
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 10,
    min_duration: Annotated[
        float, typer.Option("--min-duration", help="Seconds of timed calls, at least.")
    ] = 1.0,
    as_json: Json = False,
) -> None:
    """Measure one ONNX model's latency on this machine.

    Warm-up, then iterations until both their count and the minimum duration are reached."""
    from kdc import tools

    if engine != "onnxruntime":
        raise UserError(
            f"engine '{engine}' cannot run on this machine",
            field="--engine",
            fix="use onnxruntime here; on a device run bundle/bench.sh (trtexec)",
        )
    lat = tools.bench(
        model,
        batch=batch,
        threads=_threads(threads),
        shapes=tools.parse_shapes(shape or []),
        iterations=iterations,
        warmup=warmup,
        min_duration_s=min_duration,
    )
    if as_json:
        out.print_json(json.dumps(lat))
        return
    out.print(
        f"{model}: p50 {lat['p50_ms']:.4f} ms, p90 {lat['p90_ms']:.4f} ms, p99 "
        f"{lat['p99_ms']:.4f} ms, mean {lat['mean_ms']:.4f} ms, cv {lat['cv']:.1%} "
        f"({lat['iterations']} iterations after {lat['warmup']} warm-up; batch "
        f"{lat['batch']}; inputs {tools.shapes_text(lat['input_shape'])}; {lat['device']}; "
        "measured)"
    )
    for w in lat.get("warnings", []):
        err.print(f"warning: {w}", markup=False)


@handled
def estimate(
    model: OnnxModel,
    target: Target = "host",
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32, fp16 or int8 (default: int8 for a quantized graph, else fp32; fp16 on a "
            "DLA core)"
        ),
    ] = None,
    batch: Batch = None,
    shape: Shapes = None,
    padding: Annotated[
        float,
        typer.Option(help="Fraction of attention-mask positions that are 0 (transformers)."),
    ] = 0.0,
    dla_core: Annotated[
        int | None,
        typer.Option(help="A TensorRT engine built for this DLA core (Jetson AGX Orin, Orin NX)."),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Add the cost of each kind of kernel.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Predict one ONNX model's latency on a target.

    From its graph: a roofline model plus per-kernel overhead, with the target's calibration."""
    from kdc import tools
    from kdc.deploy.estimate import explain_table

    pred = tools.estimate(
        model,
        target,
        precision=precision,
        batch=batch,
        shapes=tools.parse_shapes(shape or []) or None,
        explain=explain,
        padding=padding,
        dla_core=dla_core,
    )
    if as_json:
        out.print_json(json.dumps(pred))
        return
    shapes = tools.shapes_text(pred.get("input_shape") or {})
    out.print(
        f"{model} on {pred['target']}: {pred['p50_ms']:.4f} ms predicted ({pred['model']}"
        f", {pred['precision']}, batch {pred['batch']}, {shapes or 'shapes as declared'}, "
        f"padding {pred['padding']:.0%}, calibrated from {pred['calibrated_from']})"
    )
    if pred.get("dla_core") is not None:
        out.print(
            f"  DLA core {pred['dla_core']}: {pred['dla_kernels']} kernels on the DLA, "
            f"{pred['gpu_fallback_kernels']} on the GPU by GPU fallback, "
            f"{pred['transitions']} switches"
        )
    if explain:
        out.print(explain_table(pred))
    for w in pred.get("warnings", []):  # e.g. shapes the graph could not infer: costed as empty
        err.print(f"warning: {w}", markup=False)


@handled
def lint(model: OnnxModel, target: Target = "jetson") -> None:
    """Check an ONNX model for TensorRT compatibility.

    No GPU needed; exit 1 when there are errors."""
    from kdc import tools
    from kdc.deploy.lint import format_findings

    findings = tools.lint(model, target)
    out.print(format_findings(findings) or "no findings", markup=False)
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


@handled
def check(
    report: Report,
    baseline: Annotated[Path, typer.Option(help="Baseline report.json.")],
    latency_tolerance: Annotated[str, typer.Option(help="Slowdown allowed: 10% or 0.1.")] = "10%",
    accuracy_tolerance: Annotated[
        str,
        typer.Option(
            help="Accuracy drop allowed, in absolute points: 0.5pt, 0.5pts or 0.5pp (a bare "
            "number or % is refused)."
        ),
    ] = "0.5pt",
    memory_tolerance: Annotated[
        str, typer.Option(help="Growth allowed in memory and model size: 10% or 0.1.")
    ] = "10%",
    latency_kind: Annotated[str, typer.Option(help="measured, predicted or all.")] = "all",
    junit: Annotated[Path | None, typer.Option(help="Write a JUnit XML file.")] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail a slowdown beyond the latency tolerance, however noisy or small the "
            "timings (a p99 of fewer than 100 timed runs is still not compared).",
        ),
    ] = False,
    update_baseline: Annotated[
        bool, typer.Option("--update-baseline", help="Copy REPORT over BASELINE deliberately.")
    ] = False,
) -> None:
    """Compare a report with a baseline; exit 1 on a regression.

    A slowdown fails beyond the tolerance and the timings' noise, a measured p50 that moved by
    0.005 ms or less (p99: 0.05 ms) never (the tolerance alone with --strict); a p99 is compared
    only where both reports timed 100 runs or more (else SKIPPED: not compared); accuracy, memory
    and model size are compared too."""
    from kdc.deploy import check as C
    from kdc.deploy.junit import write_junit
    from kdc.deploy.report_file import failed_baseline, load_report
    from kdc.deploy.report_file import update_baseline as copy_to_baseline

    if update_baseline:
        copy_to_baseline(report, baseline)
        out.print(f"baseline updated: {baseline}")
        if warning := failed_baseline(load_report(report)):
            err.print(f"warning: {warning}", markup=False)
        return
    kinds = {
        "all": ("measured", "predicted"),
        "measured": ("measured",),
        "predicted": ("predicted",),
    }
    if latency_kind not in kinds:
        raise UserError(
            f"unknown kind '{latency_kind}'",
            field="--latency-kind",
            fix="use measured, predicted or all",
        )
    if junit and junit.is_dir():  # before any line is printed
        raise UserError(
            "is a directory", source=str(junit), field="--junit", fix="pass a file, e.g. junit.xml"
        )
    cur, base = load_report(report), load_report(baseline, "baseline")
    if not base["engines"]:  # every line would be "new in this report": a gate that never fails
        raise UserError(
            "the baseline has no engines (its run's search found no student): nothing to gate on",
            source=str(baseline),
            field="engines",
            fix="store a baseline from a run that built engines (--update-baseline)",
        )
    results = [
        *C.compare(
            cur,
            base,
            latency_tolerance=C.parse_tolerance(latency_tolerance, "--latency-tolerance"),
            accuracy_tolerance=C.parse_tolerance(
                accuracy_tolerance, "--accuracy-tolerance", kind="points"
            ),
            latency_kinds=kinds[latency_kind],
            strict=strict,
            memory_tolerance=C.parse_tolerance(memory_tolerance, "--memory-tolerance"),
        ),
        *C.constraint_results(cur, base, kinds[latency_kind]),
    ]
    for r in results:
        out.print(C.format_line(r), markup=False)
    if junit:
        write_junit(results, junit)
    if any(r.failed for r in results):
        raise typer.Exit(1)


@handled
def calibrate(
    target: Target = "host",
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Three tiny models (a smoke test, never saved over a full fit)."
        ),
    ] = False,
    bundle: Annotated[
        Path | None,
        typer.Option(help="Write the model set + run_all.sh (trtexec) for a device to DIR."),
    ] = None,
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from", help="Fit to the timings in DIR/results/ (DIR: what --bundle wrote)."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Intra-op threads when timing here (default: all usable).")
    ] = None,
    dla_core: Annotated[
        int | None,
        typer.Option(
            help="With --bundle: build and time every engine on this DLA core (fits the "
            "profile's dla block).",
        ),
    ] = None,
) -> None:
    """Fit a target's latency model and save it.

    Times a generated model set here, or on the device (--bundle, then --from)."""
    from kdc.deploy import calibrate as C

    res = C.calibrate(
        target,
        quick=quick,
        bundle=bundle,
        from_dir=from_dir,
        threads=_threads(threads),
        dla_core=dla_core,
        progress=lambda msg: err.print(msg, markup=False),
    )
    if "bundle" in res:
        out.print(f"bundle written: {res['bundle']} (see README.md there)", markup=False)
        return
    out.print(f"calibration saved: {res['path']}\n{C.fit_summary(res)}", markup=False)
    for name in res.get("missing", []):
        err.print(f"warning: no timing for {name}: skipped", markup=False)
    for why in res.get("unreadable", []):
        err.print(f"warning: results/{why}: skipped", markup=False)
    for warning in C.fit_warnings(res):
        err.print(f"warning: {warning}", markup=False)
