"""The `kdc` command line: argument parsing only; all logic lives in kdc.api and the stages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kdc import __version__
from kdc.cli_errors import err, handled, run_app
from kdc.cli_options import Batch, Json, Out, Quiet, QuietSummary, Shapes, Target
from kdc.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress a trained model into an engine that fits a hardware target.",
)
profiles_app = typer.Typer(no_args_is_help=True, help="Hardware profiles.")
app.add_typer(profiles_app, name="profiles")
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _exit_for(report: dict) -> None:
    if report.get("passed") is False:
        raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        out.print(f"kdc {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """kdc: distil, prune, quantize, export, build and verify."""


@app.command()
@handled
def compress(
    config: Path,
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="Profile name, alias or YAML path (default host: this machine; kdc bundle "
            "defaults to jetson).",
        ),
    ] = "host",
    out_dir: Out = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip stages up to date.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan as JSON and run nothing (with --resume: which stages would run).",
        ),
    ] = False,
    quiet: QuietSummary = False,
    mlflow: Annotated[
        str | None, typer.Option(help="MLflow tracking URI: log config, metrics and report.*")
    ] = None,
) -> None:
    """Run every stage, search to report, for a target.

    Search, distill, export, build, verify, report; --resume skips those already up to date."""
    from kdc import api, tracking
    from kdc.config import load_config

    if dry_run:
        out.print_json(json.dumps(api.plan(config, target, out_dir, resume=resume)))
        return
    if mlflow:
        tracking.check_uri(mlflow)  # before the run, not after it
    report = api.compress(config, target, out_dir, resume=resume, quiet=quiet)
    if mlflow:
        run_id = tracking.log_run(mlflow, out_dir or api.default_run_dir(load_config(config)))
        err.print(f"MLflow run {run_id} logged to {mlflow}", markup=False)
    _exit_for(report)


@app.command()
@handled
def validate(config: Path) -> None:
    """Check a model.yaml without loading a model.

    Checks the schema, files, names, the teacher's entrypoint import, a CNN teacher's weight
    shapes against the network its entrypoint builds (called on PyTorch's meta device: no
    memory, no weights), and the data (read and split as --dry-run does, and matched to a
    Hugging Face teacher's config.json: class names, image channels)."""
    from kdc.config import load_config
    from kdc.models import teacher_kind
    from kdc.preflight import check_config, check_data, check_teacher_weights, config_warnings

    cfg = load_config(config)
    check_config(cfg)
    check_teacher_weights(cfg)
    ds = check_data(cfg)
    for note in [*config_warnings(cfg), *ds.notes]:
        err.print(f"warning: {note}", markup=False)
    classes = f", {ds.num_labels} classes" if ds.num_labels else ""
    out.print(
        f"{config}: valid ({cfg.task}, teacher {teacher_kind(cfg)}; data {len(ds.train)} train / "
        f"{len(ds.eval)} eval rows{classes})",
        markup=False,
    )


def _stage_command(name: str) -> None:
    @app.command(name=name, help=f"Run the {name} stage alone (earlier stages must be done).")
    @handled
    def cmd(
        config: Path, target: Target = "host", out_dir: Out = None, quiet: Quiet = False
    ) -> None:
        from kdc import api

        getattr(api, name)(config, target, out_dir, quiet=quiet)


for _name in ("search", "distill", "export", "build"):
    _stage_command(_name)


@app.command()
@handled
def verify(
    run_dir: Path,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="Profile name, alias or YAML path to verify the run's engines for (default: the "
            "target it was compressed for); on one without TensorRT the run's TensorRT engine "
            "is reported unavailable.",
        ),
    ] = None,
    device_results: Annotated[
        Path | None,
        typer.Option(
            help="results/ from a device bundle: its latency reported as measured, and its "
            "parity check of the engine."
        ),
    ] = None,
    quiet: QuietSummary = False,
) -> None:
    """Re-verify a finished run's engines.

    Engine accuracy, latency, memory and constraints, for the run's own target or another."""
    from kdc import api

    _exit_for(api.verify(run_dir, target, quiet=quiet, device_results=device_results))


def _threads(threads: int | None) -> int | None:
    """--threads as given (None: all usable CPUs); below 1 is a UserError, not "all"."""
    if threads is not None and threads < 1:
        raise UserError(
            f"{threads} is not a thread count",
            field="--threads",
            fix="pass 1 or more, or leave it out to use all usable CPUs",
        )
    return threads


@app.command()
@handled
def bench(
    model: Path,
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


@app.command()
@handled
def estimate(
    model: Path,
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
    shapes = ", ".join(
        f"{k} {'x'.join(map(str, v))}" for k, v in (pred.get("input_shape") or {}).items()
    )
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


@app.command()
@handled
def lint(model: Path, target: Target = "jetson") -> None:
    """Check an ONNX model for TensorRT compatibility.

    No GPU needed; exit 1 when there are errors."""
    from kdc import tools
    from kdc.deploy.lint import format_findings

    findings = tools.lint(model, target)
    out.print(format_findings(findings) or "no findings", markup=False)
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


@app.command()
@handled
def check(
    report: Path,
    baseline: Annotated[Path, typer.Option(help="Baseline report.json.")],
    latency_tolerance: Annotated[str, typer.Option(help="Slowdown allowed: 10% or 0.1.")] = "10%",
    accuracy_tolerance: Annotated[
        str, typer.Option(help="Accuracy drop allowed: 0.5pt or 0.5pp (points).")
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
            help="Fail a slowdown beyond the latency tolerance, however noisy the timings.",
        ),
    ] = False,
    update_baseline: Annotated[
        bool, typer.Option("--update-baseline", help="Copy REPORT over BASELINE deliberately.")
    ] = False,
) -> None:
    """Compare a report with a baseline; exit 1 on a regression.

    A slowdown fails beyond the tolerance and the timings' noise (the tolerance alone with
    --strict); accuracy, memory and model size are compared too."""
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


@app.command()
@handled
def inspect(run_dir: Path) -> None:
    """Show a run's stages, status and hashes.

    Flags any artifact whose sha256 no longer matches, any stage built from an earlier stage's
    older outputs, and any that failed or was cut short (exit 1)."""
    from kdc import tools
    from kdc.rundir import target_flag

    info = tools.inspect_run(run_dir)
    out.print(f"{info['run']} (target {info['target']}, kdc {info['kdc_version']})")
    for name, st in info["stages"].items():
        out.print(
            f"  {name:8} {st['status']:8} {st['wall_s'] or 0:8.2f} s  input {st['input_hash']}"
        )
        if st["error"]:
            out.print(f"      error: {st['error']}", markup=False)
        for art, v in st["artifacts"].items():
            out.print(
                f"      {'ok     ' if v['ok'] else 'CORRUPT'} {v['sha256']}  {art}", markup=False
            )
    resume = f"`kdc compress CONFIG{target_flag(info)} --out {info['run']} --resume`"
    problems = []
    if info["corrupt"]:
        problems.append(
            f"{len(info['corrupt'])} artifact(s) changed since written: "
            f"{', '.join(info['corrupt'][:5])}; {resume} redoes them"
        )
    if info["outdated"]:
        problems.append(
            f"stage(s) {', '.join(info['outdated'])} were built from earlier outputs of the "
            f"stage before them; {resume} redoes (or confirms) them"
        )
    if info["unfinished"] and info.get("writer"):
        which = ", ".join(f"{n} ({st})" for n, st in info["unfinished"].items())
        problems.append(f"stage(s) {which}: kdc process {info['writer']} is writing the run now")
    unfinished = {} if info.get("writer") else info["unfinished"]  # a failed or cut-short stage
    for n, st in unfinished.items():
        why = "see its error above; fix it" if st == "failed" else "cut short (interrupted, killed)"
        problems.append(f"stage {n} ({st}) did not finish: {why}, then {resume}")
    for line in problems:
        err.print(line, markup=False)
    if problems:
        raise typer.Exit(1)


@app.command()
@handled
def bundle(
    run_dir: Path,
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="Profile name, alias or YAML path of a TensorRT target (default jetson: a bundle "
            "is for a TensorRT device, while compress defaults to host).",
        ),
    ] = "jetson",
) -> None:
    """Write a device bundle for a finished run.

    The ONNX model, build.sh, bench.sh, goldens and parity.py, to build the engine on the device."""
    from kdc import tools

    out.print(f"bundle written: {tools.bundle(run_dir, target)}")


@profiles_app.command("list")
@handled
def profiles_list() -> None:
    """List built-in targets."""
    from rich.table import Table

    from kdc.profiles import list_profiles

    t = Table("name", "aliases", "kind", "FP16 TFLOPS", "INT8 TOPS", "GB/s", "engines")
    for p in list_profiles():
        t.add_row(
            p.name,
            ", ".join(p.aliases),
            p.kind,
            f"{p.compute.fp16_tflops:g}",
            f"{p.compute.int8_tops:g}",
            f"{p.memory.bandwidth_gbps:g}",
            ", ".join(p.runtime.engines),
        )
    out.print(t)


@profiles_app.command("show")
@handled
def profiles_show(name: str) -> None:
    """Print one profile as YAML, with its sources."""
    import yaml

    from kdc.profiles import load_profile

    out.print(
        yaml.safe_dump(load_profile(name, "NAME").model_dump(mode="json"), sort_keys=False),
        markup=False,
    )


def main() -> None:
    """Console-script entry point (exit codes: kdc.cli_errors.run_app)."""
    run_app(app)


@app.command()
@handled
def init(
    model_dir: Path,
    data: Annotated[
        str,
        typer.Option(
            help="Data file (csv/tsv/json/jsonl/parquet; txt for an embedding teacher) or a glob "
            "of them, a folder of parquet shards (a Hub download), a datasets directory "
            "(save_to_disk), an image folder or sklearn:digits."
        ),
    ],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Config to write.")] = Path(
        "model.yaml"
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out.")] = False,
) -> None:
    """Write a commented model.yaml for a teacher and its data.

    From the teacher and the data as inspected: columns, labels, classes, image size."""
    from kdc.config import as_columns
    from kdc.init import init_config

    path, teacher, info = init_config(model_dir, data, out_file, force=force)
    parts = [teacher.task, f"{len(info.labels)} classes" if info.labels else f"{info.rows} texts"]
    cols = as_columns(info.text_column) if info.text_column else []
    parts += [f"text {' and '.join(repr(c) for c in cols)}"] if cols else []
    parts += [f"labels '{info.label_column}'"] if info.label_column else []
    out.print(f"wrote {path} ({', '.join(parts)})", markup=False)
    for note in info.notes:
        err.print(f"warning: {note}", markup=False)
    if teacher.kind == "safetensors":
        out.print("edit teacher.entrypoint (marked CHANGE) before running", markup=False)
    out.print(f"next: kdc compress {path} --target host", markup=False)


@app.command()
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
