"""`kdc calibrate`: fit a profile's latency model to timings of the generated model set.

On this machine (`host`) the set is timed with ONNX Runtime (`kdc.deploy.latency`); for a device
kdc cannot reach, `write_bundle` writes the set with a `run_all.sh` that times every model with
trtexec, and `ingest_bundle` fits the `--exportTimes` files it brings back. Either way the fitted
`latency_model` and the raw samples go to `kdc.profiles.calibration_path(name)`, which
`load_profile` reads from then on.
"""

from __future__ import annotations

import json
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
    calibration_path,
    cpu_info,
    host_threads,
    load_profile,
)
from kdc.rundir import atomic_dir, now_iso, write_json, write_text

Progress = Callable[[str], None] | None
MODELS_DIR = "models"
RESULTS_DIR = "results"
PER_KIND_MIN_MODELS = 12
"""Fewer timed models fit only overhead, memory and per-precision efficiencies."""
# a median |error| of the fit on its own timings above this is warned (measured here: 9-14 %)
POOR_FIT = 0.25


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


def _samples(
    directory: Path, rows: Sequence[dict[str, Any]], profile: HardwareProfile, measured: str
) -> list[tuple[list, float]]:
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
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit `profile`'s latency model to timed manifest rows (the `measured` field; per-kind
    efficiencies from PER_KIND_MIN_MODELS rows on); returns the model and the rows with
    `predicted_ms` under it."""
    samples = _samples(Path(directory), rows, profile, measured)
    lm = fit_latency_model(samples, profile, per_kind=len(samples) >= PER_KIND_MIN_MODELS)
    out = []
    for row, (k, ms) in zip(rows, samples, strict=True):
        predicted = predict_kernels_ms(k, profile, lm)
        out.append({**row, "predicted_ms": round(predicted, 4), "error": abs(predicted / ms - 1)})
    return lm, out


def fit_warnings(result: dict[str, Any]) -> list[str]:
    """A warning when the saved fit predicts its own timings poorly (median |error| above
    POOR_FIT): every later prediction for the target uses it."""
    errors = [r["error"] for r in result.get("samples", []) if "error" in r]
    if not errors or float(np.median(errors)) <= POOR_FIT:
        return []
    return [
        f"the fit predicts its own timings with a median |error| of {np.median(errors):.0%}: "
        "predictions for this target now use it; time the set again on an idle device with "
        f"fixed clocks, or delete {result['path']} to go back to the profile's model"
    ]


def save_calibration(
    profile: HardwareProfile,
    latency_model: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    *,
    where: str,
    meta: dict[str, Any],
) -> tuple[Path, dict[str, Any]]:
    """Write the calibration file of `profile`: the latency model, its `source` now saying
    where and when it was calibrated, how it was measured, and the raw samples. Returns the
    path and the saved latency model."""
    fit_note = latency_model["source"].split(": ", 1)[-1]
    lm = {
        **latency_model,
        "source": f"calibrated on {where} at {now_iso()} from {len(rows)} models "
        f"(kdc calibrate); {fit_note}",
    }
    keep = ("name", "family", "precision", "batch", "input_shapes", "padding", "measured_ms")
    keep += ("cpu_ms", "cv")
    samples = [{k: r[k] for k in (*keep, "predicted_ms") if k in r} for r in rows]
    doc = {"profile": profile.name, "kdc_version": __version__, **meta}
    doc["bandwidth_gbps"] = profile.memory.bandwidth_gbps  # what memory_efficiency scales
    doc |= {"latency_model": lm, "samples": samples}
    path = calibration_path(profile.name)
    write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return path, lm


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
        rows = model_zoo.generate(zoo, directory, progress=_exporting(progress))
        load = load_average()
        timed = time_models(
            directory, rows, threads=threads, rounds=1 if quick else 2, progress=progress
        )
        statistic = "cpu_ms" if threads == 1 else "measured_ms"
        lm, fitted = fit_rows(directory, timed, profile, statistic)
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
    path, lm = save_calibration(profile, lm, fitted, where=where, meta=meta)
    return {"path": path, "latency_model": lm, "samples": fitted}


def _exporting(progress: Progress) -> Progress:
    return (lambda name: progress(f"exporting {name}")) if progress else None


# ---------------------------------------------------------------------------------------------
# Devices: a trtexec bundle out, exportTimes files back

_RUN_ALL = """#!/usr/bin/env bash
# Build and time every model of the kdc calibration set with trtexec ({n} models).
# Generated by kdc {version} for {profile} (TensorRT {trt} expected).
set -uo pipefail
cd "$(dirname "$0")"
{lookup}
mkdir -p engines results
failed=0
"""
_RUN_TAIL = """device="$(tr -d '\\0' 2>/dev/null < /proc/device-tree/model \\
  || nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
printf '{{"device": "%s"}}\\n' "${{device:-unknown}}" > results/device.json
echo "$failed model(s) failed. Copy $(pwd)/results back into the bundle on the host and run:"
echo "  kdc calibrate --target {profile} --from <this bundle>"
"""
_README = """# Latency calibration bundle for {profile}

Generated by kdc {version}: {n} models ({precisions}) in `models/` (see `models/manifest.json`),
TensorRT {trt} expected on the device.

1. Copy this directory to the device: `scp -r {name} user@device:~/`
2. On the device: `cd {name} && ./run_all.sh` (trtexec from PATH or
   /usr/src/tensorrt/bin/trtexec; `TRTEXEC=/path/to/trtexec ./run_all.sh` to choose another).
   Each model is built (`engines/`) and timed with CUDA graphs, spin-wait and no host/device
   copies ({iterations} iterations); per-iteration times go to `results/<model>.json`.
3. Copy `results/` back into this directory on the host and run
   `kdc calibrate --target {profile} --from {name}`. A model that failed is skipped.
"""


def _trt_commands(
    path: Path, row: dict[str, Any], profile: HardwareProfile, iterations: int
) -> tuple[list[str], list[str]]:
    """trtexec build and bench commands of one model (fp16 graphs converted where TensorRT is
    strongly typed), relative to the bundle directory."""
    import dataclasses

    import onnx

    from kdc.deploy.fp16 import convert_fp16
    from kdc.deploy.tensorrt import (
        check_graph,
        graph_facts,
        options_for_profile,
        plan_build,
    )
    from kdc.deploy.trtexec import TRTEXEC_VAR, bench_command, build_command

    trt = str(profile.runtime.tensorrt)
    name, shapes = row["name"], row["input_shapes"]
    facts = graph_facts(onnx.load(str(path), load_external_data=False))
    opts = options_for_profile(profile, row["precision"], shapes)
    plan = check_graph(plan_build(trt, opts), row["precision"], facts)
    if plan.convert_fp16:
        convert_fp16(path, path)
    dynamic = {k: v for k, v in shapes.items() if k in facts.dynamic_inputs}
    opts = dataclasses.replace(opts, profiles={k: opts.profiles[k] for k in dynamic})
    engine = f"engines/{name}.plan"
    build = build_command(f"{MODELS_DIR}/{path.name}", engine, opts, trt, trtexec=TRTEXEC_VAR)
    bench = bench_command(
        engine,
        dynamic,
        iterations=iterations,
        export_times=f"{RESULTS_DIR}/{name}.json",
        trtexec=TRTEXEC_VAR,
    )
    return build, bench


def write_bundle(
    target: str,
    out_dir: Path | str,
    *,
    zoo: Sequence[model_zoo.ZooModel] | None = None,
    quick: bool = False,
    iterations: int = 500,
    progress: Progress = None,
) -> Path:
    """Write the calibration set for a TensorRT target with `run_all.sh` and a README."""
    profile = load_profile(target)
    if not profile.runtime.tensorrt:
        raise UserError(
            f"profile {profile.name} has no TensorRT version",
            field="target",
            fix="bundle for a TensorRT target (e.g. jetson); time `host` with plain --target host",
        )
    out = Path(out_dir)
    replaceable = not out.exists() or (
        out.is_dir() and (not any(out.iterdir()) or (out / "calibration.json").is_file())
    )
    if not replaceable:  # the bundle replaces the directory: only an earlier bundle or nothing
        raise UserError(
            "exists and is not an earlier calibration bundle, which the new one would replace",
            source=str(out),
            field="--bundle",
            fix="pass a new directory path for the bundle, e.g. jetson-calibration",
        )
    from kdc.deploy.bundle import FLAGS_NEED_TRT10
    from kdc.deploy.tensorrt import typing_for
    from kdc.deploy.trtexec import TRTEXEC_LOOKUP, shell_text

    precisions = [p for p in profile.runtime.precisions if p != "fp32"] or ["fp32"]
    zoo = list(zoo or model_zoo.calibration_set(precisions, quick=quick))
    header = {"version": __version__, "profile": profile.name, "trt": profile.runtime.tensorrt}
    with atomic_dir(out) as tmp:
        rows = model_zoo.generate(
            zoo, tmp / MODELS_DIR, engine="tensorrt", progress=_exporting(progress)
        )
        script = _RUN_ALL.format(n=len(rows), lookup=TRTEXEC_LOOKUP, **header)
        if not typing_for(str(profile.runtime.tensorrt)).strongly_typed:  # as build.sh does
            remake = f"kdc calibrate --target that.yaml --bundle {out.name}"
            script += FLAGS_NEED_TRT10.format(remake=remake, **header)
        for i, row in enumerate(rows, 1):
            build, bench = _trt_commands(tmp / MODELS_DIR / row["file"], row, profile, iterations)
            log = f"{RESULTS_DIR}/{row['name']}"
            script += (
                f'echo "[{i}/{len(rows)}] {row["name"]}"\n'
                f"if ! {{ {shell_text(build)} > {log}.build.log 2>&1 &&\n"
                f"  {shell_text(bench)} > {log}.bench.log 2>&1; }}; then\n"
                f'  echo "  failed (see {log}.*.log)" >&2; failed=$((failed + 1))\nfi\n'
            )
        write_text(tmp / "run_all.sh", script + _RUN_TAIL.format(**header))
        (tmp / "run_all.sh").chmod(0o755)
        readme = _README.format(
            name=out.name,
            n=len(rows),
            precisions=", ".join(precisions),
            iterations=iterations,
            **header,
        )
        write_text(tmp / "README.md", readme)
        meta = {"target": profile.name, "iterations": iterations, "created": now_iso()}
        write_json(tmp / "calibration.json", {**meta, "kdc_version": __version__})
    return out


def _check_bundle_target(root: Path, profile: HardwareProfile) -> None:
    """Refuse a bundle written for another target than `profile`, or timed on a device that
    is another built-in target's."""
    from kdc.deploy.device_results import check_device, read_object

    if not root.is_dir():
        raise UserError(
            f"{root}: directory not found",
            field="from_dir",
            fix="pass the bundle directory `kdc calibrate --bundle` wrote, with the device's "
            "results/ copied into it",
        )
    meta_file = root / "calibration.json"
    fix = "pass the directory `kdc calibrate --bundle` wrote (calibration.json beside run_all.sh)"
    made_for = read_object(meta_file, fix=fix).get("target")
    if made_for != profile.name:
        raise UserError(
            f"the bundle was written for {made_for}, not {profile.name}: its timings would "
            f"become {profile.name}'s latency model",
            source=str(meta_file),
            field="target",
            fix=f"pass --target {made_for}, or write a bundle for {profile.name} and time it "
            "on that device",
        )
    device = root / RESULTS_DIR / "device.json"
    check_device(
        _device_name(device) or "", profile.name, str(device), f"run run_all.sh on a {profile.name}"
    )


def ingest_bundle(target: str, bundle_dir: Path | str) -> dict[str, Any]:
    """Fit `target`'s latency model to the exportTimes files in `bundle_dir/results/` and save
    it. Returns {path, latency_model, samples, missing, unreadable}; a results file that is not
    a timing (a model that failed part-way) is skipped. A bundle written for another target,
    or timed on another target's device, is refused."""
    from kdc.deploy.trtexec import parse_export_times

    profile = load_profile(target)
    root = Path(bundle_dir)
    _check_bundle_target(root, profile)
    models_dir = root / MODELS_DIR
    rows, missing, unreadable = [], [], []
    for row in model_zoo.load_manifest(models_dir):
        times = root / RESULTS_DIR / f"{row['name']}.json"
        if not times.is_file():
            missing.append(row["name"])
            continue
        try:
            stats = parse_export_times(times)
        except UserError as e:  # a model that failed part-way, as README.md says: skipped
            unreadable.append(f"{times.name}: {e.message}")
            continue
        rows.append({**row, "measured_ms": stats["p50_ms"], "cv": stats["cv"]})
    if len(rows) < 2:
        raise UserError(
            f"{len(rows)} timed models in {RESULTS_DIR}/",
            source=str(root),
            fix="run run_all.sh on the device and copy its results/ into the bundle",
        )
    lm, fitted = fit_rows(models_dir, rows, profile)
    device = _device_name(root / RESULTS_DIR / "device.json") or profile.name
    meta = {"engine": "tensorrt", "bundle": str(root.resolve()), "missing": missing}
    path, lm = save_calibration(profile, lm, fitted, where=f"{device} (trtexec)", meta=meta)
    return {
        "path": path,
        "latency_model": lm,
        "samples": fitted,
        "missing": missing,
        "unreadable": unreadable,
    }


def _device_name(path: Path) -> str | None:
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("device")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name and name != "unknown" else None


def calibrate(
    target: str,
    *,
    quick: bool = False,
    bundle: Path | str | None = None,
    from_dir: Path | str | None = None,
    threads: int | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """What `kdc calibrate` does: time here (host), write a device bundle, or ingest one."""
    if bundle and from_dir:
        raise UserError(
            "--bundle and --from exclude each other",
            field="--from",
            fix="write the bundle first, then ingest its results",
        )
    if bundle:
        return {"bundle": write_bundle(target, bundle, quick=quick, progress=progress)}
    if from_dir:
        return ingest_bundle(target, from_dir)
    profile = load_profile(target)
    if not profile.measurable:
        raise UserError(
            f"kdc cannot time {profile.name} from this machine",
            field="target",
            fix=f"run `kdc calibrate --target {profile.name} --bundle DIR`, time it on the "
            f"device, then `--from DIR`",
        )
    return calibrate_host(quick=quick, threads=threads, progress=progress)


def fit_summary(result: dict[str, Any]) -> str:
    """One line on a calibration: the fitted factors and the error of the refit."""
    lm = result["latency_model"]
    factors = {k: v for k, v in lm.items() if isinstance(v, int | float)}
    factors |= lm.get("kind_efficiency") or {}
    text = ", ".join(f"{k} {v:g}" for k, v in factors.items())
    return f"{text}; {lm['source']}"
