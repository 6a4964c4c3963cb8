"""How the `kdc` command line ends: kdc's errors and click's usage errors as exit codes and one
line each (2 bad input or usage, 1 a failed check, 3 an internal error with its traceback saved,
128 + the signal when interrupted)."""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import traceback
import typing
from collections.abc import Callable
from inspect import Parameter, cleandoc, signature
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from kdc.errors import Interrupted, KdcError, UserError

err = Console(stderr=True, highlight=False, soft_wrap=True)
# the commands' results (stdout), beside err: one width for every command when piped
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _run_dir_of(kwargs: dict[str, Any]) -> Path | None:
    """The command's run directory, if it exists: `--out` / RUN_DIR, else the config's default
    (runs/<name>)."""
    dirs = [kwargs.get("out_dir"), kwargs.get("run_dir")]
    if kwargs.get("config") is not None and kwargs.get("out_dir") is None:
        from kdc.api import default_run_dir
        from kdc.config import load_config

        with contextlib.suppress(Exception):  # an unreadable config: the temp dir then
            dirs.append(default_run_dir(load_config(Path(kwargs["config"]))))
    return next((Path(d) for d in dirs if d is not None and Path(d).is_dir()), None)


def _crash_log(exc: BaseException, kwargs: dict[str, Any]) -> Path:
    """Save the traceback in the command's run directory if it has one, else in the temp dir."""
    text = "".join(traceback.format_exception(exc))
    run = _run_dir_of(kwargs)
    if run is not None:
        from kdc.rundir import now_iso, write_text

        with contextlib.suppress(OSError):  # else the temp dir
            return write_text(run / f"crash-{now_iso().replace(':', '')}.txt", text)
    fd, name = tempfile.mkstemp(prefix="kdc-crash-", suffix=".txt")
    with open(fd, "w") as f:
        f.write(text)
    return Path(name)


def command_flags(fn: Callable[..., Any]) -> dict[str, str]:
    """A command's options: parameter name → its long flag (`out_dir` → `--out`), and the
    flag's own name (`out`, as the Python API calls it) → the flag."""
    flags = {}
    hints = typing.get_type_hints(fn, include_extras=True)
    for name, param in signature(fn).parameters.items():
        info = next(iter(getattr(hints.get(name), "__metadata__", ())), None)
        if isinstance(info, typer.models.OptionInfo):  # in Annotated, its first flag is `default`
            decls = [info.default, *(info.param_decls or ())]
            long = [d for d in decls if isinstance(d, str) and d.startswith("--")]
            flags[name] = long[0] if long else "--" + name.replace("_", "-")
            flags.setdefault(flags[name][2:].replace("-", "_"), flags[name])  # the API's name
        elif info is None and param.default is not Parameter.empty:
            flags[name] = "--" + name.replace("_", "-")  # typer: a default makes an option
    return flags


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map kdc's errors to exit codes: 2 bad input (one line), 1 failed check, 3 internal. The
    command's docstring, its help, is kept with each paragraph on one line (`reflowed`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as e:
            err.print(f"error: {e.as_option(command_flags(fn))}", markup=False)
            raise typer.Exit(2) from None
        except (KeyboardInterrupt, Interrupted) as e:
            stop = e if isinstance(e, Interrupted) else Interrupted()
            params = signature(fn).parameters
            again = "with --resume " if "resume" in params else ""
            staged = {"resume", "out_dir", "device_results"} & set(params)  # runs stages
            err.print(
                f"{stop}: finished stages are kept; run the same command {again}to continue"
                if staged
                else f"{stop}: nothing was saved; run the command again",
                markup=False,
            )
            raise typer.Exit(stop.exit_code) from None
        except KdcError as e:
            err.print(f"failed: {e}", markup=False)
            raise typer.Exit(e.exit_code) from None
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] != "onnxruntime":
                raise _internal(e, kwargs) from None
            from kdc.deploy.ort_install import missing_error

            err.print(f"error: {missing_error()}", markup=False)
            raise typer.Exit(2) from None
        except Exception as e:
            raise _internal(e, kwargs) from None

    wrapper.__doc__ = reflowed(fn.__doc__ or "")
    return wrapper


def reflowed(doc: str) -> str:
    """A docstring with the line breaks inside its paragraphs joined: rich prints hard breaks as
    they are, mid-sentence in `kdc --help`'s summaries (each command's first paragraph) and in a
    command's own --help, which wraps the paragraphs to the terminal once joined."""
    return "\n\n".join(" ".join(p.split()) for p in cleandoc(doc).split("\n\n"))


def _internal(e: Exception, kwargs: dict[str, Any]) -> typer.Exit:
    """An internal error: keep the traceback in the run directory, print where; exit 3."""
    log = _crash_log(e, kwargs)
    err.print(
        f"internal error: {type(e).__name__}: {str(e)[:300]} (traceback: {log})", markup=False
    )
    return typer.Exit(3)


def _click_error(name: str) -> type[Exception]:
    """click's exception class `name`, from typer's vendored click or click itself (the public
    `typer.BadParameter` derives from both UsageError and ClickException)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def run_app(app: typer.Typer) -> None:
    """Run `app` as the `kdc` command and exit. A usage error (unknown command or option, missing
    argument) is one line and exit 2, as every other bad input; no arguments prints the help
    (exit 2)."""
    usage_error, click_error = _click_error("UsageError"), _click_error("ClickException")
    try:
        code = app(prog_name="kdc", standalone_mode=False)
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()  # the help
        else:
            where = f"; see `{e.ctx.command_path} --help`" if e.ctx else ""
            err.print(f"error: {e.format_message().rstrip('.')}{where}", markup=False)
        sys.exit(2)
    except click_error as e:
        err.print(f"error: {e.format_message()}", markup=False)
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
