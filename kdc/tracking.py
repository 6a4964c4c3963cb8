"""Optional MLflow tracking of a finished run (`kdc compress ... --mlflow URI`): the config as
params, accuracy and latency per engine as metrics, report.* as artifacts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from kdc.deploy.constraints import stand_in
from kdc.deploy.report_cells import off_target
from kdc.errors import UserError
from kdc.rundir import read_json

ARTIFACTS = ("report.json", "report.md", "report.png", "report.html")
LATENCY_STATS = ("p50_ms", "p99_ms")


def require_mlflow() -> ModuleType:
    """The mlflow module, or a UserError saying how to install it."""
    try:
        import mlflow
    except ImportError:
        raise UserError(
            "MLflow tracking needs the mlflow package",
            field="--mlflow",
            fix="pip install mlflow-skinny (or 'kdc[mlflow]')",
        ) from None
    return mlflow


def check_uri(uri: str) -> None:
    """Before a run: a UserError when mlflow is missing or has no tracking store for the URI's
    scheme (else a typo in --mlflow surfaces only after the whole pipeline)."""
    require_mlflow()
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as stores
    except ImportError:  # another MLflow layout: the URI is checked when the run is logged
        return
    try:
        stores.get_store_builder(uri)
    except Exception:
        raise UserError(
            f"MLflow has no tracking store for the URI '{uri}'",
            field="--mlflow",
            fix="use an http(s)://host:port server, a file:/path store or databricks",
        ) from None


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; lists and scalars as JSON text (MLflow params)."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj if isinstance(obj, str) else json.dumps(obj)}


def _latency_metrics(report: dict, name: str, part: dict) -> dict[str, float]:
    out = {}
    for block in (part.get("latency"), part.get("target_latency")):
        if isinstance(block, dict) and block.get("kind") in ("measured", "predicted"):
            kind = "measured_here" if off_target(report, block) else block["kind"]
            for stat in LATENCY_STATS:
                if isinstance(block.get(stat), int | float):
                    out[f"{name}.{kind}_{stat}"] = float(block[stat])
    return out


def report_metrics(report: dict) -> dict[str, float]:
    """Accuracy and latency (measured and predicted, named so) of the teacher and each engine,
    size, and whether every constraint passed. A timing of the build machine for another target
    is `measured_here_*` (report.md: "measured here", "not the target"); `measured_*` is the
    target's own (this machine, or the device's results read back)."""
    parts = [("teacher", report.get("teacher") or {})]
    parts += [(f"{e.get('engine')}-{e.get('precision')}", e) for e in report.get("engines", [])]
    out: dict[str, float] = {}
    for name, part in parts:
        acc = part.get("accuracy") or {}
        if isinstance(acc.get("value"), int | float):  # a stand-in's (not the engine's) says so
            kind = "_stand_in" if stand_in(acc) else ""
            out[f"{name}.{acc.get('metric', 'accuracy')}{kind}"] = float(acc["value"])
        if isinstance(part.get("size_mb"), int | float):
            out[f"{name}.size_mb"] = float(part["size_mb"])
        out.update(_latency_metrics(report, name, part))
    if isinstance(report.get("passed"), bool):
        out["passed"] = float(report["passed"])
    return out


def log_run(uri: str, run_dir: Path | str) -> str:
    """Log a finished run directory to the MLflow tracking server or store at `uri` (experiment:
    the run's name); return the MLflow run id."""
    mlflow = require_mlflow()
    run_dir = Path(run_dir)
    if not (run_dir / "report.json").is_file():
        raise UserError(
            "the run has no report.json to log",
            source=str(run_dir),
            field="--mlflow",
            fix="let the run finish (kdc compress --resume)",
        )
    report, manifest = read_json(run_dir / "report.json"), read_json(run_dir / "manifest.json")
    if uri.startswith("file:"):  # asked for explicitly: MLflow 3 refuses file stores by default
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    quiet = logging.getLogger("mlflow")  # its INFO lines ("Creating a new experiment"): kdc
    level = quiet.level  # says what it logged itself, once
    quiet.setLevel(logging.WARNING)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(report.get("run", {}).get("name") or "kdc")
        target = report.get("target", {}).get("name", "")
        with mlflow.start_run(run_name=target) as run:
            mlflow.log_params(
                {
                    **flatten(manifest.get("config", {})),
                    "target": target,
                    "kdc_version": report.get("kdc_version", ""),
                }
            )
            mlflow.log_metrics(report_metrics(report))
            for name in ARTIFACTS:
                if (run_dir / name).is_file():
                    mlflow.log_artifact(str(run_dir / name))
            return run.info.run_id
    except mlflow.exceptions.MlflowException as e:
        raise UserError(
            f"MLflow refused the run: {str(e).splitlines()[0][:200]}",
            field="--mlflow",
            fix=f"check the tracking URI '{uri}'; the report is in {run_dir}",
        ) from None
    finally:
        quiet.setLevel(level)
