"""`kdc check`: compare a report with a baseline report, with stated tolerances and noise.

Reports are read by `kdc.deploy.report_file.load_report` (a file that is not a kdc report.json is
a one-line error naming it and the field, exit 2). A baseline of
another target or another model's task is not compared: every metric is `missing` (each one the
baseline has fails: exit 1) and says to re-baseline. Two reports are of one task when their `task`
is the same and, where both record `data.labels`, the same set of class labels (in any order: a
teacher can order them otherwise); `run.name` and the config hash are not compared, as a new run
of the same task legitimately changes them (a renamed run still compares).
Engines are matched by (engine, precision). Per engine, each latency object (`latency`, and
`target_latency`) is compared like with like: measured with measured (p50 and p99), predicted with
predicted (p50). A change of kind, a measurement taken under other conditions (device, batch,
threads, input_shape; the TensorRT version of a device timing, where both record it) or a
prediction made otherwise (latency model, its calibration, the hash of
the profile fields it reads, batch, input shape, padding) is reported as `missing`, never compared.
A slowdown is a regression only when it exceeds both the tolerance and the noise (with `--strict`,
the tolerance alone; one past the tolerance within the noise passes as `warn`), the noise being
2·hypot(u_base, u_now) capped at NOISE_CAP (50 %) however noisy the timings (a speed-up is
`improved` only beyond the uncapped noise), u the relative uncertainty of the statistic: its
spread over interleaved rounds, (max - min) / median of `rounds_p50_ms` (`rounds_p99_ms` for p99;
the p50's where absent) when both were timed in 2 or more rounds, else the statistic's standard
error from the per-sample cv under a normal approximation, k·cv/sqrt(iterations) with k =
sqrt(q(1-q))/φ(Φ⁻¹(q)): 1.2533 for the median, 3.7336 for p99 (cv itself when iterations is not
recorded); 0 for predictions. A measured p50 may also move by 0.005 ms and a p99 by 0.05 ms
either way, whatever the relative allowance (LATENCY_FLOOR_MS; not with `--strict`): a
sub-millisecond model's timings move by that much between runs. A measured p99 is compared only
where both measurements timed at least 100 runs (`iterations`, check_noise.MIN_RUNS): else its
line is `skipped` ("not compared: p99 from 20 runs now (needs >= 100)"), neither a regression
nor an improvement, with `--strict` too; one whose runs are not recorded is compared, and says
so. Accuracy (the task's primary metric) regresses when it drops by more than the tolerance in
absolute points; accuracy figures from different engines are `missing`.
Memory (`memory` and `target_memory`: a measurement's `engine_mb`, peak RSS less the runtime's,
where both record it, else its peak RSS; a prediction's peak) and the model's `size_mb` regress
when they grow by more than the memory tolerance (relative; memory may always grow by
MEMORY_FLOOR_MB), memory like with like (kind; a prediction's batch, and its memory model
where both record it; a measurement's device, batch and threads where both record them). When
the baseline has latency figures of the compared kinds and none was compared, a failing `latency`
line says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from kdc.deploy.check_noise import latency_noise, noisy, run_counts
from kdc.deploy.constraints import (
    LATENCY_KEYS,
    MEMORY_MB,
    accuracy_value,
    engine_label,
    headline_latency,
    value_and_engine,
)
from kdc.deploy.junit import NOT_COMPARED, write_junit
from kdc.deploy.tolerance import TOLERANCE_UNITS, parse_tolerance
from kdc.errors import UserError

__all__ = [
    "TOLERANCE_UNITS",
    "CheckResult",
    "compare",
    "constraint_results",
    "format_line",
    "parse_tolerance",
    "write_junit",
]

STATS = {"measured": ("p50", "p99"), "predicted": ("p50",)}
# the most a noise allowance may excuse: timings noisier than this (one disturbed round) cannot
# clear a larger slowdown, or a shared CI runner would pass a 3x one
NOISE_CAP = 0.5
CONDITIONS = {  # what makes two latency figures of a kind comparable
    "measured": ("device", "batch", "threads", "input_shape", "dla_core"),
    "predicted": (
        "model",
        "calibrated_from",
        "predictor_sha256",
        "batch",
        "input_shape",
        "padding",
        "dla_core",
    ),
}
# compared only where both figures record them: a device timing's TensorRT version (an engine
# is built for one; "unknown" when trtexec's banner was not read)
RECORDED_CONDITIONS = {"measured": ("tensorrt",)}
REBASELINE = "re-baseline with `kdc check --update-baseline`"
# what a measured statistic may move by between runs (ms), whatever its relative allowance: a
# sub-millisecond model's timings move with the machine more than with the model (the digits
# example's 0.012 ms p50 moved by 1.4 µs, +12 %, between two runs of one config; its p99 rests
# on the few calls an interrupt or a context switch of tens of µs landed in: 0.018 ms in one
# run, 0.035 ms in another). A p50 twice as slow, from 0.005 ms up, is still past the floor.
LATENCY_FLOOR_MS = {"p50": 0.005, "p99": 0.05}


@dataclass
class CheckResult:
    metric: str  # "<engine>-<precision>.<metric>", e.g. "onnxruntime-int8.latency_p99_ms"
    baseline: float | None
    current: float | None
    limit: float | None
    noise: float | None  # relative noise of a latency comparison
    # "pass" | "warn" (a slowdown past the tolerance passed on the noise allowance alone) |
    # "regression" | "improved" | "missing" | "skipped" (a p99 of too few timed runs: never fails)
    status: str
    message: str

    @property
    def failed(self) -> bool:
        """A regression, or a baseline metric this report lacks or can no longer compare."""
        return self.status == "regression" or (
            self.status == "missing" and self.baseline is not None
        )


def _missing(metric: str, base: float | None, cur: float | None, why: str) -> CheckResult:
    return CheckResult(metric, base, cur, None, None, "missing", why)


def _latency_result(
    metric: str,
    b: float,
    c: float,
    tol: float,
    noise: tuple[float, str] | None,
    note: str,
    kind: str = "measured",
    stat: str = "p50",
) -> CheckResult:
    """`noise` None (`kdc check --strict`): the tolerance alone is allowed. A measured `stat`
    may also move by its LATENCY_FLOOR_MS either way, whatever the relative allowance."""
    margin = tol if noise is None else max(tol, min(noise[0], NOISE_CAP))
    gain = tol if noise is None else max(tol, noise[0])  # the cap guards slowdowns only
    floor = LATENCY_FLOOR_MS[stat] if noise is not None and kind == "measured" else 0.0
    limit = b + max(b * margin, floor)
    status = "regression" if c > limit else "improved" if c < b - max(b * gain, floor) else "pass"
    rel = (c - b) / b if b else math.inf
    if noise is None:
        allowed = "the tolerance (--strict: no noise allowance)"
    else:
        capped = f" capped at {NOISE_CAP:.0%}" if noise[0] > NOISE_CAP else ""
        allowed = f"max(tolerance {tol:.1%}, noise {noise[0]:.1%}{noise[1]}{capped})"
    if floor > b * margin:  # said where it allows more: a sub-millisecond model's
        allowed += f", or +{floor:g} ms (the {stat} floor), whichever is more"
    if status == "pass" and abs(c - b) > b * tol and abs(c - b) <= floor:
        note += (
            f"; {c - b:+.4f} ms is within the {stat} floor of {floor:g} ms: not significant "
            "(a sub-millisecond timing moves by that much between runs)"
        )
    elif status == "pass" and c > b * (1 + tol):  # passed on the noise allowance alone
        status = "warn"
        note += "; slower than the tolerance, passed on the noise: time it on a quieter machine"
        note += " (more verify.rounds) or gate with --strict"
    msg = f"{b:.4g} -> {c:.4g} ms {kind} ({rel:+.1%}); allowed +{margin:.1%} = {allowed}{note}"
    return CheckResult(metric, b, c, limit, None if noise is None else noise[0], status, msg)


def _shown(value: object, width: int = 72) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _conditions(
    base: dict,
    cur: dict,
    kind: str,
    conditions: dict = CONDITIONS,
    recorded_conditions: dict = RECORDED_CONDITIONS,
) -> str:
    """`device 'A' vs 'B'; threads 2 vs 4` for the `conditions` of `kind` that differ, else ''
    (`recorded_conditions` only where both record them)."""
    recorded = [
        k
        for k in recorded_conditions.get(kind, ())
        if all(o.get(k) not in (None, "unknown") for o in (base, cur))
    ]
    return "; ".join(
        f"{k} {_shown(base.get(k))} vs {_shown(cur.get(k))}"
        for k in (*conditions.get(kind, ()), *recorded)
        if _condition(k, base.get(k)) != _condition(k, cur.get(k))
    )


def _condition(key: str, value: Any) -> Any:
    """A condition as compared: a host device's "(1 threads)" of reports before kdc wrote
    "(1 thread)" is the same device."""
    if key == "device" and isinstance(value, str):
        return re.sub(r"\((\d+) threads?\)", r"(\1 threads)", value)
    return value


def _latency(
    label: str,
    key: str,
    base: dict | None,
    cur: dict | None,
    tol: float,
    kinds: tuple[str, ...],
    strict: bool = False,
) -> list[CheckResult]:
    present = [o for o in (base, cur) if o is not None]
    if not {o.get("kind") for o in present} & set(kinds):
        return []
    kind = present[0].get("kind")
    why = (
        "new in this report: no baseline"
        if base is None
        else "missing from this report"
        if cur is None
        else f"latency kind changed: baseline {kind}, now {cur.get('kind')}; not compared "
        f"(--latency-kind predicted compares the predictions both keep; or {REBASELINE})"
        if cur.get("kind") != kind
        else f"not comparable: {differ}; {REBASELINE}"
        if (differ := _conditions(base, cur, kind))
        else ""
    )
    if why:  # one line per figure of the kind, named as when compared (stable in JUnit)
        return [
            _missing(
                f"{label}.{key}_{s}_ms",
                None if base is None else base.get(f"{s}_ms", headline_latency(base)[0]),
                None if cur is None else cur.get(f"{s}_ms"),
                why,
            )
            for s in STATS.get(kind, ("p50",))
        ]
    note = noisy(base, cur)
    return [
        _figure(f"{label}.{key}_{s}_ms", base, cur, s, tol, note, strict, kind)
        for s in STATS.get(kind, ("p50",))
    ]


def _figure(
    metric: str, base: dict, cur: dict, stat: str, tol: float, note: str, strict: bool, kind: str
) -> CheckResult:
    """`stat` of two comparable latency objects of `kind`; a measured one `skipped` where either
    rests on too few timed runs (`run_counts`, with `--strict` too)."""
    b, c = base.get(f"{stat}_ms"), cur.get(f"{stat}_ms")
    if b is None and c is not None:  # a damaged baseline gates nothing on this figure
        return CheckResult(metric, b, c, None, None, "regression", f"the baseline has no {stat}_ms")
    if b is None or c is None:
        return _missing(metric, b, c, f"{stat}_ms absent")
    too_few, runs = run_counts(base, cur, stat) if kind == "measured" else ("", "")
    if too_few:
        return CheckResult(
            metric, b, c, None, None, "skipped", f"{b:.4g} -> {c:.4g} ms {kind}; {too_few}"
        )
    noise = None if strict else latency_noise(base, cur, stat)
    return _latency_result(metric, float(b), float(c), tol, noise, note + runs, kind, stat)


def _comparable(
    base: dict, cur: dict, key: str, kinds: tuple[str, ...]
) -> tuple[dict | None, dict | None]:
    """The two engines' `key` latencies to compare. A TensorRT engine timed on the device
    (`latency` measured) keeps the search's prediction as `predicted_latency`: where only
    predictions are wanted (`--latency-kind predicted`), the predictions are compared. Else a
    measurement on one side only is a changed kind: a device timing that went missing fails."""
    b, c = base.get(key), cur.get(key)
    if key != "latency" or "predicted" not in kinds:
        return b, c

    def predicted(engine: dict, lat: dict | None) -> dict | None:
        if lat is not None and lat.get("kind") == "predicted":
            return lat
        return engine.get("predicted_latency")

    if "measured" not in kinds:
        pb, pc = predicted(base, b), predicted(cur, c)
        if pb is not None and pc is not None:
            return pb, pc
    return b, c


def _accuracy(
    label: str,
    base: dict | None,
    cur: dict | None,
    tol: float,
    task: str | None,
    key: str = "accuracy",
) -> list[CheckResult]:
    base, cur = base or {}, cur or {}
    (bm, b), (cm, c) = accuracy_value(base, task), accuracy_value(cur, task)
    metric = f"{label}.{key}"
    if b is None and c is None:
        return []
    be, ce = base.get("engine"), cur.get("engine")
    if b is None or c is None or bm != cm or be != ce:
        why = (
            "new in this report: no baseline"
            if b is None
            else "missing from this report"
            if c is None
            else f"metric changed: baseline {bm}, now {cm}; not compared"
            if bm != cm
            else f"not comparable: accuracy engine {be!r} vs {ce!r}; {REBASELINE}"
        )
        return [_missing(metric, b, c, why)]
    drop = round(b - c, 9)
    status = "regression" if drop > tol else "improved" if -drop > tol else "pass"
    msg = f"{b:.4f} -> {c:.4f} {cm} ({(c - b) * 100:+.2f} pt); allowed drop {tol * 100:.2f} pt"
    return [CheckResult(metric, b, c, b - tol, None, status, msg)]


def _same_cpu(base: dict, cur: dict) -> bool:
    """Both engines record the accuracy of this CPU's int8 kernels (beside a stand-in accuracy)
    on the same CPU: another CPU's kernels (VNNI or not) would be another engine."""
    if not all(isinstance(e.get("accuracy_this_cpu"), dict) for e in (base, cur)):
        return False
    devices = [(e.get("latency") or {}).get("device") for e in (base, cur)]
    return devices[0] is not None and _condition("device", devices[0]) == _condition(
        "device", devices[1]
    )


MEMORY_KEYS = ("memory", "target_memory")
MEMORY_CONDITIONS = {"predicted": ("batch",)}
# growth within this is never a regression (MiB): a peak RSS moves by pages between runs, and a
# kilobyte more in a predicted peak matters to no deployment
MEMORY_FLOOR_MB = 1.0
# compared where both figures record them (earlier reports' measurements record none, their
# predictions no model)
MEMORY_RECORDED = {"measured": ("device", "batch", "threads"), "predicted": ("model",)}


def _growth(
    metric: str, b: float, c: float, tol: float, what: str, floor: float = 0.0
) -> CheckResult:
    """A figure where more is worse (memory, size): it may grow by `tol` (relative) or by
    `floor` (absolute, in its unit), whichever is more; `what` starts with the unit."""
    margin = max(b * tol, floor)
    limit = b + margin
    status = "regression" if c > limit else "improved" if c < b - margin else "pass"
    rel = f" ({(c - b) / b:+.1%})" if b else ""
    unit = what.split()[0]
    allowed = f"+{tol:.1%}" + (f" or +{floor:g} {unit}, whichever is more" if floor else "")
    msg = f"{b:.4g} -> {c:.4g} {what}{rel}; allowed {allowed}"
    return CheckResult(metric, b, c, limit, None, status, msg)


def _memory(
    label: str, key: str, base: dict | None, cur: dict | None, tol: float
) -> list[CheckResult]:
    """The engine's `key` memory object compared like with like (MEMORY_CONDITIONS)."""
    if base is None and cur is None:
        return []
    metric = f"{label}.{key}_mb"

    # a measurement's engine_mb (peak RSS less the runtime's) where both record it: the
    # runtime's ~45 MiB would dilute the engine's growth
    engine_only = all("engine_mb" in (m or {}) for m in (base, cur))

    def figure(mem: dict | None) -> str:
        kind = str((mem or {}).get("kind"))
        return "engine_mb" if engine_only and kind == "measured" else MEMORY_MB.get(kind, "")

    def value(mem: dict | None) -> float | None:
        v = (mem or {}).get(figure(mem))
        return None if v is None else float(v)

    b, c = value(base), value(cur)
    kind = (base or cur or {}).get("kind")
    differ = (
        _conditions(base, cur, kind, MEMORY_CONDITIONS, MEMORY_RECORDED) if base and cur else ""
    )
    why = (
        "new in this report: no baseline"
        if base is None
        else f"the baseline's {kind} memory has no {figure(base) or 'figure'}"
        if b is None
        else "missing from this report"
        if c is None
        else f"memory kind changed: baseline {kind}, now {cur.get('kind')}; not compared"
        if cur.get("kind") != kind
        else f"not comparable: {differ}; {REBASELINE}"
        if differ
        else ""
    )
    if why:
        return [_missing(metric, b, c, why)]
    what = "engine_mb (peak RSS less the runtime's)" if engine_only else MEMORY_MB[kind]
    return [_growth(metric, b, c, tol, f"MiB {kind} {what}", MEMORY_FLOOR_MB)]


def _size(label: str, base: dict, cur: dict, tol: float) -> list[CheckResult]:
    b, c = base.get("size_mb"), cur.get("size_mb")
    if b is None and c is None:
        return []
    metric = f"{label}.size_mb"
    if b is None or c is None:
        why = "new in this report: no baseline" if b is None else "missing from this report"
        return [_missing(metric, b, c, why)]
    return [_growth(metric, float(b), float(c), tol, "MB model file")]


def _engines(report: dict, which: str) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for e in report.get("engines") or []:
        key = (e.get("engine"), e.get("precision"))
        if key in out:
            raise UserError(
                f"two engines are {engine_label(e)}",
                source=which,
                field="engines",
                fix="keep one engine per (engine, precision)",
            )
        out[key] = e
    return out


def compare(
    report: dict,
    baseline: dict,
    *,
    latency_tolerance: float = 0.10,
    accuracy_tolerance: float = 0.005,
    latency_kinds: tuple[str, ...] = ("measured", "predicted"),
    strict: bool = False,
    memory_tolerance: float = 0.10,
) -> list[CheckResult]:
    """One result per compared metric of every engine in either report (baseline order first).
    `latency_kinds` limits latency comparisons, e.g. to ("predicted",) on shared CI runners
    (without "measured", measured memory is not compared either: it is the runner's);
    `strict` allows a slowdown of the tolerance alone, however noisy the timings;
    `memory_tolerance` is the growth allowed in memory and model size."""
    base, cur = _engines(baseline, "baseline"), _engines(report, "report")
    task = report.get("task") or baseline.get("task")
    results: list[CheckResult] = []
    for key in [*base, *(k for k in cur if k not in base)]:
        be, ce = base.get(key, {}), cur.get(key, {})
        label = engine_label(be or ce)
        for lk in LATENCY_KEYS:
            bl, cl = _comparable(be, ce, lk, latency_kinds)
            results += _latency(label, lk, bl, cl, latency_tolerance, latency_kinds, strict)
        results += _accuracy(
            label, be.get("accuracy"), ce.get("accuracy"), accuracy_tolerance, task
        )
        if _same_cpu(be, ce):  # a stand-in's engine as this CPU's int8 kernels run it
            results += _accuracy(
                label,
                be["accuracy_this_cpu"],
                ce["accuracy_this_cpu"],
                accuracy_tolerance,
                task,
                "accuracy_this_cpu",
            )
        for mk in MEMORY_KEYS:
            bm, cm = be.get(mk), ce.get(mk)
            measured = any((m or {}).get("kind") == "measured" for m in (bm, cm))
            if measured and "measured" not in latency_kinds:
                continue  # --latency-kind predicted: a runner's own peak RSS is not gated
            results += _memory(label, mk, bm, cm, memory_tolerance)
        results += _size(label, be, ce, memory_tolerance)
    differ = _other_model(baseline, report)
    if differ:
        target = (report.get("target") or {}).get("name")
        fix = (  # a baseline per target: overwriting the other target's is not the fix
            f"compare with a baseline made for {target}"
            if differ.startswith("target ")
            else REBASELINE
        )
        why = f"not comparable: {differ}; {fix}"
        results = [_missing(r.metric, r.baseline, r.current, why) for r in results]
    return results + _nothing_compared(baseline, results, latency_kinds)


def _other_model(baseline: dict, report: dict) -> str:
    """`target 'a' vs 'b'; task ...` for what makes the two reports results of another target or
    task (class labels: where both record them), else ''."""
    target = ((r.get("target") or {}).get("name") for r in (baseline, report))
    task = (r.get("task") for r in (baseline, report))
    differ = [f"{k} {b!r} vs {c!r}" for k, (b, c) in (("target", target), ("task", task)) if b != c]
    bl, cl = ((r.get("data") or {}).get("labels") for r in (baseline, report))
    if bl is not None and cl is not None and set(bl) != set(cl):
        only = (_shown(sorted(set(x) - set(y)), 40) for x, y in ((bl, cl), (cl, bl)))
        differ.append(f"data.labels {len(bl)} vs {len(cl)} classes ({' vs '.join(only)})")
    return "; ".join(differ)


def _nothing_compared(
    baseline: dict, results: list[CheckResult], kinds: tuple[str, ...]
) -> list[CheckResult]:
    """A failing `latency` line when the baseline has latency figures and none of those of
    `kinds` was compared, or it has none of `kinds` (its `baseline`: how many it has)."""
    lats = [
        e[k]
        for e in baseline.get("engines") or []
        for k in LATENCY_KEYS
        if isinstance(e.get(k), dict)
    ]
    has = sorted({str(lat.get("kind")) for lat in lats})
    figures = sum(  # p50 and p99 of a measurement, p50 of a prediction
        len(STATS.get(str(lat.get("kind")), ("p50",))) for lat in lats if lat.get("kind") in kinds
    )
    compared = any(r.metric.endswith("_ms") and r.status not in NOT_COMPARED for r in results)
    if compared or not has:  # (no latency in the baseline: nothing to gate on)
        return []
    if not figures:  # e.g. --latency-kind predicted against a host run, which measures only
        msg = (
            f"nothing compared: the baseline has no {'/'.join(kinds)} latency figures (it has "
            f"{'/'.join(has)} ones: --latency-kind {has[0]} or all)"
        )
        return [_missing("latency", 0.0, None, msg)]  # a baseline value: fails
    msg = f"nothing compared: none of the baseline's {figures} {'/'.join(kinds)} latency figures"
    return [_missing("latency", float(figures), 0.0, f"{msg} is comparable with this report")]


def constraint_results(
    report: dict,
    baseline: dict | None = None,
    kinds: tuple[str, ...] = ("measured", "predicted"),
) -> list[CheckResult]:
    """The report's own constraint rows as results (metric `constraint.<name>`), so that a
    budget failure shows in the same lines and JUnit file; no value counts as a failure. A
    constraint of the `baseline` the report lacks (the device's parity once its results are
    gone) is MISSING and fails, but for the device's own checks when `kinds` leave out what
    was measured (a CPU runner comparing predictions with a device-verified baseline)."""
    names = {c.get("name") for c in report.get("constraints") or []}
    device_checks = "measured" not in kinds
    out = [
        _missing(  # a baseline figure (its limit where it had none) makes it fail
            f"constraint.{c['name']}",
            c["value"] if c.get("value") is not None else c.get("limit", 0.0),
            None,
            "missing from this report",
        )
        for c in (baseline or {}).get("constraints") or []
        if c.get("name") not in names and not (device_checks and c.get("limit_from") == "bundle")
    ]
    for c in report.get("constraints") or []:
        value, ok = c.get("value"), c.get("pass") is True
        if value is None:
            msg = f"no value ({c.get('reason', 'unknown')}); limit {c['limit']:g}"
        else:
            msg = f"{value:g} vs limit {c['limit']:g} ({value_and_engine(c)})"
            if not ok and c.get("reason"):
                msg += f": {c['reason']}"
        status = "pass" if ok else "regression"
        out.append(
            CheckResult(f"constraint.{c['name']}", None, value, c["limit"], None, status, msg)
        )
    return out


def format_line(result: CheckResult) -> str:
    """`REGRESSION onnxruntime-int8.latency_p99_ms  2.600 -> 3.100 ms (+19.2%); allowed ...`"""
    return f"{result.status.upper():<10} {result.metric:<42} {result.message}"
