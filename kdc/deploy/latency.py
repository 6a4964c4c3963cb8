"""The measurement protocol (as trtexec does it): warm-up by count and time, timed iterations until
a minimum count and duration, percentiles, coefficient of variation, and warnings when the numbers
cannot be trusted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kdc.deploy.onnxruntime import feed_for, make_session, session_options_record
from kdc.deploy.trtexec import CV_LIMIT
from kdc.errors import UserError
from kdc.profiles import cpu_info, host_threads

THROTTLE_RATIO = 1.15  # last 10 % of samples slower than first 10 % by this factor
MIN_SAMPLES_FOR_TREND = 20


def _warnings(
    samples_ms: np.ndarray, cv: float, iterations: int, max_duration_s: float
) -> list[str]:
    found = []
    if cv > CV_LIMIT:
        found.append(
            f"coefficient of variation {cv * 100:.1f}% > {CV_LIMIT * 100:.1f}%: results are noisy"
        )
    if len(samples_ms) >= MIN_SAMPLES_FOR_TREND:
        k = len(samples_ms) // 10
        if samples_ms[-k:].mean() > THROTTLE_RATIO * samples_ms[:k].mean():
            found.append("latency rose during the run: machine may be throttled or shared")
    if len(samples_ms) < iterations:
        found.append(
            f"stopped at max_duration_s={max_duration_s:g} after {len(samples_ms)} of "
            f"{iterations} iterations"
        )
    return found


def measure_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 10,
    warmup_s: float = 0.2,
    iterations: int = 200,
    min_duration_s: float = 1.0,
    max_duration_s: float = 60.0,
) -> dict:
    """Time `fn`: warm up until `warmup` calls AND `warmup_s` seconds (at most a quarter of
    `max_duration_s`), then call it until `iterations` calls AND `min_duration_s` seconds, stopping
    at `max_duration_s`. Returns latency stats in ms, cv, counts and warnings."""
    if iterations < 1:
        raise UserError("iterations must be at least 1", field="iterations", fix="pass >= 1")
    start, done_warmup = time.perf_counter(), 0
    while True:
        elapsed = time.perf_counter() - start
        enough = done_warmup >= warmup and elapsed >= warmup_s
        if enough or elapsed >= max_duration_s / 4:
            break
        fn()
        done_warmup += 1

    samples: list[int] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        enough = len(samples) >= iterations and elapsed >= min_duration_s
        if enough or (samples and elapsed >= max_duration_s):
            break
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    duration_s = time.perf_counter() - start

    ms = np.asarray(samples, dtype=np.float64) / 1e6
    mean = float(ms.mean())
    std = float(ms.std())  # population std, as trtexec.latency_stats and bench.sh
    cv = std / mean if mean > 0 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": mean,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "std_ms": std,
        "cv": cv,
        "iterations": len(ms),
        "warmup": done_warmup,
        "duration_s": duration_s,
        "max_duration_s": max_duration_s,  # where timing stops, however few runs it timed
        "warnings": _warnings(ms, cv, iterations, max_duration_s),
    }


def take_rows(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """`batch` rows of every input, repeating rows cyclically when there are fewer."""
    if batch < 1:
        raise UserError("batch must be at least 1", field="batch", fix="pass --batch 1 or more")
    out = {}
    for name, arr in inputs.items():
        if len(arr) == 0:
            raise UserError(
                f"input '{name}' has no rows",
                field="inputs",
                fix="measure with at least one encoded example",
            )
        out[name] = np.resize(arr, (batch, *arr.shape[1:])) if len(arr) < batch else arr[:batch]
    return out


def measure_onnx(
    path: Path | str,
    inputs: dict[str, np.ndarray],
    *,
    threads: int | None = None,
    warmup: int = 10,
    warmup_s: float = 0.2,
    iterations: int = 200,
    min_duration_s: float = 1.0,
    max_duration_s: float = 60.0,
    batch: int = 1,
    precision: str = "fp32",
    engine: str = "onnxruntime",
) -> dict:
    """Time `session.run` on `batch` rows of `inputs`: a REPORT.md latency object, kind measured."""
    session = make_session(path, threads=threads)
    record = session_options_record(session)
    feed = feed_for(session, take_rows(inputs, batch))
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a failed run raises; kdc reports it, ONNX Runtime need not log
    stats = measure_callable(
        lambda: session.run(None, feed, quiet),
        warmup=warmup,
        warmup_s=warmup_s,
        iterations=iterations,
        min_duration_s=min_duration_s,
        max_duration_s=max_duration_s,
    )
    n = record["intra_op_threads"]
    if n > (cpus := host_threads()):
        stats["warnings"].append(
            f"{n} intra-op threads on {cpus} CPUs: the threads contend, so latency is inflated"
        )
    return {
        "kind": "measured",
        "device": f"{cpu_info()[0]} ({n} thread{'s' * (n != 1)})",
        "engine": engine,
        "provider": record["providers"][0],
        "precision": precision,
        "batch": batch,
        "threads": n,
        "input_shape": {k: list(v.shape) for k, v in feed.items()},
        **stats,
    }


def measure_onnx_rounds(
    models: dict[str, tuple[Path | str, str]],
    inputs: dict[str, np.ndarray],
    *,
    rounds: int = 1,
    progress: Callable[[int], None] | None = None,
    **options,
) -> dict[str, dict]:
    """Time several models (name → (path, precision)) in `rounds` interleaved rounds, the order
    reversed every other round, so drift on a shared machine hits every model alike. Each model
    keeps its median-p50 round (of an even number, the lower middle one: a round actually timed),
    with every round's p50 and p99 in `rounds_p50_ms` and `rounds_p99_ms`. `progress` is told of
    each timing done; `options` go to `measure_onnx`."""
    names = list(models)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            path, precision = models[n]
            runs[n].append(measure_onnx(path, inputs, precision=precision, **options))
            if progress is not None:
                progress(1)
    if rounds == 1:
        return {n: measured[0] for n, measured in runs.items()}
    kept = "median" if rounds % 2 else "lower-middle"
    return {
        n: {
            **sorted(measured, key=lambda m: m["p50_ms"])[(rounds - 1) // 2],
            "protocol": f"{kept} p50 of {rounds} interleaved rounds",
            "rounds_p50_ms": [round(m["p50_ms"], 4) for m in measured],
            "rounds_p99_ms": [round(m["p99_ms"], 4) for m in measured],
        }
        for n, measured in runs.items()
    }


def throughput(
    path: Path | str,
    inputs: dict[str, np.ndarray],
    batch: int = 32,
    threads: int | None = None,
    iterations: int = 20,
    min_duration_s: float = 1.0,
    precision: str = "fp32",
) -> dict:
    """Items per second at `batch`: the measured latency object plus `items_per_s`."""
    lat = measure_onnx(
        path,
        inputs,
        threads=threads,
        warmup=min(5, iterations),
        warmup_s=0.1,
        iterations=iterations,
        min_duration_s=min_duration_s,
        batch=batch,
        precision=precision,
    )
    return {**lat, "items_per_s": batch / (lat["mean_ms"] / 1e3)}
