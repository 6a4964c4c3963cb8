"""A kdc report.json on disk: `load_report` reads one and checks the parts `kdc check` reads
(any problem is a one-line UserError naming the file and field); `update_baseline` makes one the
baseline, atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdc.config import Task
from kdc.errors import UserError, field_path
from kdc.rundir import atomic_path, writable

__all__ = ["load_report", "update_baseline"]


class _Strict(BaseModel):
    # a NaN or infinite figure compares false with any limit, so it would pass: refused
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class _Latency(_Strict):
    kind: Literal["measured", "predicted"]  # REPORT.md: no other kind exists
    p50_ms: float | None = None
    p99_ms: float | None = None
    cv: float | None = Field(None, ge=0)
    iterations: int | None = Field(None, ge=1)
    rounds_p50_ms: list[float] | None = None
    rounds_p99_ms: list[float] | None = None


class _Accuracy(_Strict):
    metric: str | None = None
    value: float | None = None
    accuracy: float | None = None  # the primary metrics (metrics.primary_metric) of the flat form
    mean_cosine: float | None = None


class _Memory(_Strict):
    kind: str | None = None
    model: str | None = None  # a prediction's memory model
    peak_rss_mb: float | None = None
    peak_mb: float | None = None
    engine_mb: float | None = None
    batch: int | None = Field(None, ge=1)


class _Engine(_Strict):
    engine: str
    precision: str
    status: str
    latency: _Latency | None = None
    target_latency: _Latency | None = None
    predicted_latency: _Latency | None = None  # a device-timed engine's prediction, compared too
    accuracy: _Accuracy | None = None
    accuracy_this_cpu: _Accuracy | None = None  # beside a stand-in accuracy: compared too
    memory: _Memory | None = None
    target_memory: _Memory | None = None
    size_mb: float | None = None


class _Constraint(_Strict):
    name: str
    limit: float
    value: float | None = None
    source: str | None = None
    passed: bool = Field(alias="pass")


class _Target(_Strict):
    name: str
    profile_sha256: str | None = None


class _Data(_Strict):
    labels: list[str] | None = None


class _Report(_Strict):
    """The parts of a report.json that `kdc check` reads; anything else is passed over."""

    engines: list[_Engine]
    task: Task
    target: _Target
    data: _Data | None = None
    constraints: list[_Constraint] | None = None


EXPECTED = {
    "model_type": "an object",
    "dict_type": "an object",
    "list_type": "a list",
    "float_type": "a number",
    "finite_number": "a finite number",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "string_type": "a string",
}


def _structure_error(e: ValidationError, path: Path, what: str) -> UserError:
    err = e.errors()[0]
    where = field_path(err["loc"])
    if err["type"] == "missing":
        problem = "the field is missing"
    elif err["type"] in EXPECTED:
        problem = f"expected {EXPECTED[err['type']]}, got {json.dumps(err['input'])[:40]}"
    else:
        problem = err["msg"].replace("Input should be", "expected")
    return UserError(
        f"{what} is not a kdc report.json: {problem}",
        source=str(path),
        field=where,
        fix="pass the report.json of a kdc run; regenerate it with kdc compress or kdc verify",
    )


def load_report(path: Path | str, what: str = "report") -> dict:
    """A report.json as a dict, its structure checked; any problem is a one-line UserError
    naming the file (and the field)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{what} not found",
            source=str(path),
            fix="store one first: kdc check REPORT --baseline "
            f"{path} --update-baseline (a kdc run's report.json)"
            if what == "baseline"
            else "pass runs/<name>/report.json written by kdc compress",
        ) from None
    except IsADirectoryError:
        raise UserError(
            f"{what} is a directory", source=str(path), fix="pass the report.json file in it"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"{what} is not valid JSON ({str(e).splitlines()[0]})",
            source=str(path),
            fix="regenerate it with kdc compress or kdc verify",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("engines"), list):
        raise UserError(
            f"{what} has no 'engines' list: not a kdc report.json",
            source=str(path),
            field="engines",
            fix="pass the report.json of a kdc run",
        )
    try:
        _Report.model_validate(data)
    except ValidationError as e:
        raise _structure_error(e, path, what) from None
    return data


def update_baseline(report_path: Path | str, baseline_path: Path | str) -> Path:
    """Make a report the new baseline: validate it, then copy it atomically."""
    load_report(report_path)
    with (
        writable(baseline_path, "baseline", "--baseline", "ci/baseline.json"),
        atomic_path(baseline_path) as tmp,
    ):
        shutil.copyfile(report_path, tmp)
    return Path(baseline_path)


def failed_baseline(doc: dict) -> str | None:
    """What to warn of a report made the baseline when it FAILED (None when it passed)."""
    if doc.get("passed") is not False:
        return None
    failed = [c["name"] for c in doc.get("constraints") or [] if not c.get("pass")]
    return (
        "the new baseline is a FAILED report"
        + (f" ({', '.join(failed)})" if failed else "")
        + (
            ": later checks compare with its figures"
            if doc.get("engines")
            else ", with no engine (its search found no student): later checks refuse it (exit 2) "
            "until a run that built engines replaces it"
        )
    )
