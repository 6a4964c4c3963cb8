"""Exceptions that map to the exit codes of REPORT.md."""

from __future__ import annotations

import signal
from collections.abc import Iterable


class KdcError(Exception):
    """Base class of kdc's own errors."""

    exit_code = 3


class UserError(KdcError):
    """Bad input or usage: printed as one line, exit code 2."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.message, self.source, self.field, self.fix = message, source, field, fix
        parts = []
        if source:
            parts.append(str(source))
        if field:
            parts.append(f"field '{field}'")
        head = ": ".join(parts)
        text = f"{head}: {message}" if head else message
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)

    def as_option(self, flags: dict[str, str]) -> UserError:
        """This error naming a command's flag (`flags`: parameter → flag) where its field is
        that parameter (the Python API names the parameter); a field of a file stays."""
        if self.source or self.field not in flags:
            return self
        return type(self)(self.message, field=flags[self.field], fix=self.fix)

    def located(self, config_file: str) -> UserError:
        """This error naming `config_file` when it names a config field but no file."""
        if self.source or not self.field or self.field.startswith("-"):
            return self
        return type(self)(self.message, source=config_file, field=self.field, fix=self.fix)


class ConfigError(UserError):
    """A model.yaml that does not validate."""


class ConstraintFailure(KdcError):
    """A constraint or regression check failed: exit code 1."""

    exit_code = 1


class NoStudentFits(ConstraintFailure):
    """No candidate of a search is predicted under the latency budget; `rejected` holds
    (architecture, predicted ms) of every candidate tried, fastest first."""

    def __init__(self, message: str, rejected: list[tuple[dict, float]]) -> None:
        super().__init__(message)
        self.rejected = rejected


class Interrupted(KdcError):
    """Ctrl-C or SIGTERM: the run stopped cleanly and can be resumed; exit 128 + the signal."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.exit_code = 128 + int(signum)
        super().__init__(f"interrupted ({signal.Signals(signum).name})")


def field_path(loc: Iterable[str | int]) -> str:
    """A field's path as kdc's messages write it: list positions in brackets,
    `distill.losses[0].params`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first message line (its type name when it has none), for a one-line
    error."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def listed(names: list, most: int = 20) -> str:
    """Names for a one-line message: all of them, or the first `most` and how many more."""
    more = f" … and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(map(str, names[:most])) + more


def unused_note(source: str, given: dict[str, object], why: str, use: str = "") -> str:
    """A warning, in an error's form, that config file `source` gives settings a run does not
    use: `given` (field → the value to name it with, None for none), why, and the fix: `use`
    (what makes the run use them), or drop them."""
    named = listed([k if v is None else f"{k} {v}" for k, v in given.items()])
    drop = f"drop {listed(list(given))}"
    return f"{source}: {named} not used: {why} (fix: {f'{use}, or {drop}' if use else drop})"
