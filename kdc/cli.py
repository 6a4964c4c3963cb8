"""The `kdc` command line: argument parsing only; all logic lives in kdc.api and the stages."""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from kdc import __version__
from kdc.errors import Interrupted, KdcError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress a trained model into an engine that fits a hardware target.")
profiles_app = typer.Typer(no_args_is_help=True, help="Hardware profiles.")
app.add_typer(profiles_app, name="profiles")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

Target = Annotated[str, typer.Option("--target", "-t", help="Profile name, alias or YAML path.")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (runs/<name>).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _crash_log(exc: BaseException) -> Path:
    path = Path(tempfile.gettempdir()) / f"kdc-crash-{Path(tempfile.mktemp()).name}.txt"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map kdc's errors to exit codes: 2 bad input (one line), 1 failed check, 3 internal."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as e:
            err.print(f"error: {e}", markup=False)
            raise typer.Exit(2) from None
        except (KeyboardInterrupt, Interrupted):
            err.print("interrupted: finished stages are kept; run the same command with "
                      "--resume to continue", markup=False)
            raise typer.Exit(130) from None
        except KdcError as e:
            err.print(f"failed: {e}", markup=False)
            raise typer.Exit(e.exit_code) from None
        except Exception as e:  # an internal error: keep the traceback, print where
            log = _crash_log(e)
            err.print(f"internal error: {type(e).__name__}: {str(e)[:300]} (traceback: {log})",
                      markup=False)
            raise typer.Exit(3) from None

    return wrapper


def _exit_for(report: dict) -> None:
    if report.get("passed") is False:
        raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        out.print(f"kdc {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    """kdc: distil, prune, quantize, export, build and verify."""


@app.command()
@handled
def compress(config: Path, target: Target = "host", out_dir: Out = None,
             resume: Annotated[bool, typer.Option(help="Skip finished stages.")] = False,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan.")] = False,
             quiet: Quiet = False) -> None:
    """Run the whole pipeline: search, distill, export, build, verify, report."""
    from kdc import api

    if dry_run:
        out.print_json(json.dumps(api.plan(config, target, out_dir)))
        return
    _exit_for(api.compress(config, target, out_dir, resume=resume, quiet=quiet))


@app.command()
@handled
def validate(config: Path) -> None:
    """Check a model.yaml without running anything."""
    from kdc.config import load_config

    cfg = load_config(config)
    out.print(f"{config}: valid ({cfg.task}, teacher {cfg.teacher.kind})")


def _stage_command(name: str) -> None:
    @app.command(name=name, help=f"Run the {name} stage alone (earlier stages must be done).")
    @handled
    def cmd(config: Path, target: Target = "host", out_dir: Out = None,
            quiet: Quiet = False) -> None:
        from kdc import api

        getattr(api, name)(config, target, out_dir, quiet=quiet)


for _name in ("search", "distill", "export", "build"):
    _stage_command(_name)


@app.command()
@handled
def verify(run_dir: Path, target: Annotated[str | None, typer.Option("--target", "-t")] = None,
           quiet: Quiet = False) -> None:
    """Re-verify a finished run: engine accuracy, latency, memory, constraints."""
    from kdc import api

    _exit_for(api.verify(run_dir, target, quiet=quiet))


@profiles_app.command("list")
@handled
def profiles_list() -> None:
    """List built-in targets."""
    from rich.table import Table

    from kdc.profiles import list_profiles

    t = Table("name", "aliases", "kind", "FP16 TFLOPS", "INT8 TOPS", "GB/s", "engines")
    for p in list_profiles():
        t.add_row(p.name, ", ".join(p.aliases), p.kind, f"{p.compute.fp16_tflops:g}",
                  f"{p.compute.int8_tops:g}", f"{p.memory.bandwidth_gbps:g}",
                  ", ".join(p.runtime.engines))
    out.print(t)


@profiles_app.command("show")
@handled
def profiles_show(name: str) -> None:
    """Print one profile as YAML, with its sources."""
    import yaml

    from kdc.profiles import load_profile

    out.print(yaml.safe_dump(load_profile(name).model_dump(mode="json"), sort_keys=False),
              markup=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        sys.exit(code)
