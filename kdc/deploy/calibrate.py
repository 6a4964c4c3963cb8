"""`kdc calibrate`: fit a profile's latency model to timings of the generated model set.

On this machine (`host`) the set is timed with ONNX Runtime (`kdc.deploy.latency`); a device kdc
cannot reach gets a trtexec bundle (`kdc.deploy.calibrate_bundle`). Either way the fitted
`latency_model` (or a DLA core's `dla` block) and the raw samples go to
`kdc.profiles.calibration_path(name)`, which `load_profile` reads from then on.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kdc import __version__
from kdc.deploy import model_zoo
from kdc.deploy.estimate import fit_latency_model, onnx_kernels, predict_kernels_ms
from kdc.errors import UserError
from kdc.profiles import (
    HardwareProfile,
    LatencyModel,
    calibration_path,
    cpu_info,
    host_threads,
    load_profile,
)
from kdc.rundir import now_iso, write_text

Progress = Callable[[str], None] | None
MODELS_DIR = "models"
RESULTS_DIR = "results"
PER_KIND_MIN_MODELS = 12
"""Fewer timed models fit only overhead, memory and per-precision efficiencies."""
# a median |error| of the fit on its own timings above this is warned (measured here: 9-14 %)
POOR_FIT = 0.25
DLA_KEYS = ("dla", "dla_calibration")
"""What a DLA calibration adds to its profile's calibration file, beside the GPU's fit."""
SAMPLE_KEYS = (
    *("name", "family", "precision", "batch", "input_shapes", "padding"),
    *("measured_ms", "cpu_ms", "cv", "predicted_ms"),
)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# Timing on this machine


def time_model(
    path: Path | str,
    model: model_zoo.ZooModel,
    *,
    threads: int = 1,
    warmup: int = 5,
    iterations: int = 20,
    min_duration_s: float = 0.5,
) -> dict[str, Any]:
    """Time one model with the measurement protocol (`measure_callable`, intra-op threads
    pinned): wall-clock p50 `measured_ms`, and with one thread, where ONNX Runtime computes on
    the calling thread, `cpu_ms`: the p50 of that thread's CPU time, which leaves out the time
    the OS gave to other processes."""
    from kdc.deploy.latency import measure_callable
    from kdc.deploy.onnxruntime import feed_for, make_session

    session = make_session(path, threads=threads)
    feed = feed_for(session, model_zoo.inputs_for(model))
    cpu_ns: list[int] = []

    def run() -> None:
        start = time.thread_time_ns()
        session.run(None, feed)
        cpu_ns.append(time.thread_time_ns() - start)

    stats = measure_callable(
        run, warmup=warmup, warmup_s=0.05, iterations=iterations, min_duration_s=min_duration_s
    )
    out = {"measured_ms": stats["p50_ms"], "cv": stats["cv"], "iterations": stats["iterations"]}
    if threads == 1:
        out["cpu_ms"] = float(np.median(cpu_ns[-stats["iterations"] :])) / 1e6
    return out


def time_models(
    directory: Path | str,
    rows: Sequence[dict[str, Any]],
    *,
    threads: int = 1,
    rounds: int = 1,
    progress: Progress = None,
    **protocol: Any,
) -> list[dict[str, Any]]:
    """`time_model` for every manifest row in `rounds` interleaved passes; each statistic is
    the lowest over the passes (the pass least disturbed by other load)."""
    best: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        for row in rows:
            if progress:
                progress(f"timing {row['name']} (pass {r + 1}/{rounds})")
            t = time_model(
                Path(directory) / row["file"], model_zoo.zoo_model(row), threads=threads, **protocol
            )
            prev = best.setdefault(row["name"], t)
            for k in ("measured_ms", "cpu_ms"):
                if k in t and t[k] < prev[k]:
                    prev[k] = t[k]
                    if k == "measured_ms":
                        prev["cv"] = t["cv"]
    return [{**row, **best[row["name"]]} for row in rows]


def timed_samples(
    directory: Path, rows: Sequence[dict[str, Any]], profile: HardwareProfile, measured: str
) -> list[tuple[list, float]]:
    """(kernels, milliseconds) of each timed manifest row (its `measured` field)."""
    return [
        (
            onnx_kernels(
                directory / row["file"],
                profile,
                precision=row["precision"],
                batch=row["batch"],
                input_shapes=row["input_shapes"],
                padding=float(row.get("padding", 0.0)),
            ),
            float(row[measured]),
        )
        for row in rows
    ]


def fit_rows(
    directory: Path | str,
    rows: Sequence[dict[str, Any]],
    profile: HardwareProfile,
    measured: str = "measured_ms",
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Fit `profile`'s latency model to timed manifest rows (the `measured` field; per-kind
    efficiencies from PER_KIND_MIN_MODELS rows on); returns the model, the rows with
    `predicted_ms` under it and the names of the factors fitted."""
    samples = timed_samples(Path(directory), rows, profile, measured)
    lm, factors = fit_latency_model(samples, profile, per_kind=len(samples) >= PER_KIND_MIN_MODELS)
    out = []
    for row, (k, ms) in zip(rows, samples, strict=True):
        predicted = predict_kernels_ms(k, profile, lm)
        out.append({**row, "predicted_ms": round(predicted, 4), "error": abs(predicted / ms - 1)})
    return lm, out, factors


def fit_warnings(result: dict[str, Any]) -> list[str]:
    """Warnings when the saved fit predicts its own timings poorly (median |error| above
    POOR_FIT: every later prediction for the target uses it), or has no more timings than the
    factors it fitted (`fitted`); and the result's own `notes`."""
    errors = [r["error"] for r in result.get("samples", []) if "error" in r]
    factors = result.get("fitted") or []
    out = list(result.get("notes") or [])
    if factors and len(errors) <= len(factors):
        lost = len(result.get("missing") or []) + len(result.get("unreadable") or [])
        out.append(
            f"{len(errors)} timed models fit {len(factors)} factors ({', '.join(factors)}), "
            "which the fit reproduces whatever they measured: time the full set (no --quick)"
            + (f"; {lost} models of the set have no usable timing" if lost else "")
        )
    if errors and float(np.median(errors)) > POOR_FIT:
        key = "dla" if "dla" in result else "latency_model"
        out.append(
            f"the fit predicts its own timings with a median |error| of {np.median(errors):.0%}: "
            "predictions for this target now use it; time the set again on an idle device with "
            f"fixed clocks, or remove `{key}` from {result['path']} to go back to the profile's"
        )
    return out


def save_calibration(
    profile: HardwareProfile,
    latency_model: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    *,
    where: str,
    meta: dict[str, Any],
) -> tuple[Path, dict[str, Any], list[str]]:
    """Write the calibration file of `profile`: the latency model, its `source` now saying
    where and when it was calibrated, how it was measured, and the raw samples (a DLA fit
    already there is kept). A `--quick` fit (`meta["quick"]`, a smoke test) never replaces a
    full one. Returns the path, the saved latency model and warnings (a kept DLA fit made
    against another GPU model)."""
    saved, path = saved_calibration(profile), calibration_path(profile.name)
    if meta.get("quick") and saved.get("latency_model") and not saved.get("quick"):
        raise UserError(
            f"a full calibration of {profile.name} is saved in {path}, and a --quick fit (three "
            "tiny models, a smoke test) would replace it",
            field="--quick",
            fix="calibrate again without --quick (drop --quick), or delete that file first",
        )
    fit_note = latency_model["source"].split(": ", 1)[-1]
    lm = {
        **latency_model,
        "source": f"kdc calibrate on {where} at {now_iso()}, {len(rows)} models; {fit_note}",
    }
    doc = {"profile": profile.name, "kdc_version": __version__, **meta}
    doc["bandwidth_gbps"] = profile.memory.bandwidth_gbps  # what memory_efficiency scales
    doc["peaks"] = profile.compute_peaks()  # what the compute efficiencies scale
    doc |= {"latency_model": lm, "samples": sample_records(rows)}
    kept = {k: v for k, v in saved.items() if k in DLA_KEYS}
    write_text(path, yaml.safe_dump(doc | kept, sort_keys=False))
    now = profile.model_copy(update={"latency_model": LatencyModel.model_validate(lm)})
    made_with = (kept.get("dla_calibration") or {}).get("gpu_model_sha256")
    notes = []
    if "dla" in kept and made_with != now.predictor_sha256():
        bundle = kept["dla_calibration"].get("bundle", "its bundle")
        notes.append(
            f"the DLA fit in {path} was made with the GPU model this fit replaces (it costs the "
            f"kernels that fall back to the GPU): refit it with `kdc calibrate --target "
            f"{profile.target_arg} --from {bundle}`"
        )
    return path, lm, notes


def sample_records(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a calibration file keeps of each timed row."""
    return [{k: r[k] for k in SAMPLE_KEYS if k in r} for r in rows]


def saved_calibration(profile: HardwareProfile) -> dict[str, Any]:
    """The profile's calibration file as saved: empty when there is none or it is not a YAML
    mapping (`load_profile` refuses a damaged one with its fix; a profile given as an object
    skips that)."""
    path = calibration_path(profile.name)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def calibrate_host(
    *,
    quick: bool = False,
    threads: int | None = None,
    work_dir: Path | str | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """Generate the calibration set (three tiny models when `quick`), time it here, fit the
    host profile and save it. Returns {path, latency_model, samples}."""
    profile = load_profile("host")
    threads = threads or host_threads()
    zoo = model_zoo.calibration_set(
        profile.runtime.precisions, quick=quick, paddings=model_zoo.HOST_PADDINGS
    )
    with tempfile.TemporaryDirectory(prefix="kdc-calibrate-") as scratch:
        directory = Path(work_dir or scratch)
        rows = model_zoo.generate(zoo, directory, progress=exporting_progress(progress))
        load = load_average()
        timed = time_models(
            directory, rows, threads=threads, rounds=1 if quick else 2, progress=progress
        )
        statistic = "cpu_ms" if threads == 1 else "measured_ms"
        lm, fitted, factors = fit_rows(directory, timed, profile, statistic)
    import onnxruntime

    clock = "thread CPU time" if statistic == "cpu_ms" else "wall-clock p50"
    where = (
        f"{cpu_info()[0]} ({threads} thread{'s' * (threads > 1)}, onnxruntime "
        f"{onnxruntime.__version__}, {clock})"
    )
    meta = {
        "engine": "onnxruntime",
        "threads": threads,
        "statistic": statistic,
        "load_average": load,
        "machine": platform.node() or "unknown",
        "quick": quick,
    }
    path, lm, notes = save_calibration(profile, lm, fitted, where=where, meta=meta)
    return {"path": path, "latency_model": lm, "samples": fitted, "notes": notes} | {
        "fitted": factors
    }


def exporting_progress(progress: Progress) -> Progress:
    """`progress` reporting each model the zoo exports."""
    return (lambda name: progress(f"exporting {name}")) if progress else None


def calibrate(
    target: str,
    *,
    quick: bool = False,
    bundle: Path | str | None = None,
    from_dir: Path | str | None = None,
    threads: int | None = None,
    dla_core: int | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """What `kdc calibrate` does: time here (host), write a device bundle (for a DLA core
    with `dla_core`), or ingest one."""
    if bundle and from_dir:
        raise UserError(
            "--bundle and --from exclude each other",
            field="--from",
            fix="write the bundle first, then ingest its results",
        )
    if dla_core is not None and not bundle:
        raise UserError(
            "--dla-core goes with --bundle: the bundle times its engines on that core, and "
            "--from reads the core from the bundle",
            field="--dla-core",
            fix="pass --bundle DIR with it, or drop it",
        )
    if bundle or from_dir:
        from kdc.deploy import calibrate_bundle as B
    if bundle:
        written = B.write_bundle(target, bundle, quick=quick, dla_core=dla_core, progress=progress)
        return {"bundle": written}
    if from_dir:
        return B.ingest_bundle(target, from_dir)
    profile = load_profile(target)
    if not profile.measurable and not profile.runtime.tensorrt:  # no bundle to time it with
        raise UserError(
            f"{profile.name} is a CPU kdc cannot time from here, and device bundles are for "
            "TensorRT targets: its predictions use the latency_model its YAML gives",
            field="target",
            fix="to fit a CPU, run kdc on that machine with --target host (read from the "
            "machine), or edit the profile's latency_model",
        )
    if not profile.measurable:
        raise UserError(
            f"kdc cannot time {profile.name} from this machine",
            field="target",
            fix=f"run `kdc calibrate --target {profile.target_arg} --bundle DIR`, time it on the "
            f"device, then `--from DIR`",
        )
    return calibrate_host(quick=quick, threads=threads, progress=progress)


def fit_summary(result: dict[str, Any]) -> str:
    """One line on a calibration: the fitted factors and the error of the refit."""
    lm = result.get("latency_model") or result["dla"]
    factors = {k: v for k, v in lm.items() if isinstance(v, int | float)}
    factors |= {f"kind_efficiency.{k}": v for k, v in (lm.get("kind_efficiency") or {}).items()}
    if "fitted" in result:  # what was kept (or, on a DLA, the peaks) is the profile's
        factors = {k: v for k, v in factors.items() if k in result["fitted"]}
    text = ", ".join(f"{k} {v:g}" for k, v in factors.items())
    return f"{text}; {lm['source']}"
