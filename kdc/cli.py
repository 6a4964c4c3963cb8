"""The `kdc` command line: argument parsing only; all logic lives in kdc.api and the stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kdc import __version__
from kdc.cli_errors import err, handled, out, run_app
from kdc.cli_options import Config, ModelDir, Out, ProfileName, Quiet, QuietSummary, RunDir, Target
from kdc.cli_tools import bench, calibrate, check, estimate, lint

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress a trained model into an engine that fits a hardware target.",
)
profiles_app = typer.Typer(no_args_is_help=True, help="Hardware profiles.")
app.add_typer(profiles_app, name="profiles")


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
    config: Config,
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
def validate(config: Config) -> None:
    """Check a model.yaml without loading a model.

    Checks the schema, files, names, the teacher's entrypoint import, a CNN teacher's weight
    shapes against the network its entrypoint builds (called on PyTorch's meta device: no
    memory, no weights), that a small one exports to ONNX (built with random weights), and the
    data (read and split as --dry-run does, and matched to a Hugging Face teacher's config.json:
    class names, image channels). As for the default target host, refuses verify.iterations
    under 100 with verify.min_duration_s 0 and constraints.latency_budget_ms (judged by a p99
    of at least 100 timed runs), as compress does, and warns of them otherwise."""
    from kdc.config import load_config
    from kdc.models import teacher_kind
    from kdc.preflight import check_config, check_data, config_warnings
    from kdc.preflight_verify import check_p99_runs, p99_runs
    from kdc.profiles import uncalibrated_host

    cfg = load_config(config)
    check_config(cfg)
    check_p99_runs(cfg, host := uncalibrated_host())
    ds = check_data(cfg)
    for note in [*config_warnings(cfg), *p99_runs(cfg, host), *ds.notes]:
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
        config: Config, target: Target = "host", out_dir: Out = None, quiet: Quiet = False
    ) -> None:
        from kdc import api

        getattr(api, name)(config, target, out_dir, quiet=quiet)


for _name in ("search", "distill", "export", "build"):
    _stage_command(_name)


@app.command()
@handled
def verify(
    run_dir: RunDir,
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


for _tool in (bench, estimate, lint, check):  # kdc.cli_tools
    app.command()(_tool)


@app.command()
@handled
def inspect(run_dir: RunDir) -> None:
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
    run_dir: RunDir,
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
def profiles_show(name: ProfileName) -> None:
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
    model_dir: ModelDir,
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


app.command()(calibrate)
