"""Resolve a run's constraints (config over profile defaults) against its report.

Which engine answers which constraint:
- The *shipped engine* is the engine flagged `"ships": true`, else the first engine in
  `report["engines"]` with status `built` (here, or `built_on: device`: a bundle's engine the
  device built and timed, its results read back) whose precision is the student's chosen precision
  (`report["student"]["precision"]`). Accuracy (`accuracy_drop`, `percent_max_degradation`) and
  `size_mb` are read from it.
- Latency and memory are target quantities, read from an engine's `latency`/`target_latency`
  and `memory` objects. Among the shipped engine and those of the chosen precision (the shipped
  one first, then report order), a *measured* figure counts when it was taken on the target:
  the target is the host (`target.measurable`, or target name `host`) or the object says
  `"on_target": true`. Failing that, the first *predicted* figure is used, and the row says
  so. Measured latency is judged by `p99_ms`; a prediction has no tail, so by its `p50_ms`. A
  measured p99 of fewer timed runs (`iterations`) than `check_noise.MIN_RUNS` is not judged:
  the row keeps its value, fails, and its `reason` says so (a gate asked to judge a budget it
  cannot is not passed).
  Memory: `peak_rss_mb` if measured, `peak_mb` if predicted.
- A constraint with a limit but no value gets `pass: false` and a `reason`; never skipped.
- `device_parity`: one row per engine whose parity the device checked (`parity.on_target`,
  from `kdc verify --device-results`), without a configured limit: the value is the cosine of
  the device's outputs against the bundle's goldens, the limit the bundle's floor, and it passes
  only when the device's check passed (so at or above the floor, and for a classifier with the
  goldens' class on at least the bundle's `parity_min_agreement` share of the rows). A check the
  device could not make fails with its reason, and so does one made by another runner than the
  TensorRT engine (parity.py's ONNX Runtime fallback: `not_the_engine`), with no value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kdc.deploy.check_noise import MIN_RUNS, runs_fix
from kdc.deploy.metrics import primary_metric
from kdc.errors import UserError

LATENCY_KEYS = ("latency", "target_latency")  # as timed/predicted here, and predicted for target
MEMORY_MB = {"measured": "peak_rss_mb", "predicted": "peak_mb"}


class Undetermined(Exception):
    """A constraint's value cannot be read from the report; the message says why."""


@dataclass(frozen=True)
class Reading:
    value: float
    source: str  # "measured" | "predicted"
    engine: str
    note: str = ""
    batch: int | None = None  # rows the figure is for (memory: the largest an engine takes)
    unjudged: str = ""  # why the value cannot be judged against its limit (too few runs)


def on_dla_core(lat: dict) -> str:
    """` on DLA core N` for a latency of an engine built for a DLA core, else ''."""
    return f" on DLA core {lat['dla_core']}" if lat.get("dla_core") is not None else ""


def engine_label(engine: dict) -> str:
    """`onnxruntime-int8`: how reports, checks and plots name an engine."""
    return f"{engine.get('engine', '?')}-{engine.get('precision', '?')}"


def engine_status(engine: dict) -> str:
    """`built`, `built on device` (a bundle's engine the device built and timed), `bundle`, …"""
    status = engine.get("status", "–")
    return f"{status} on {engine['built_on']}" if engine.get("built_on") else status


def headline_latency(latency: dict) -> tuple[float | None, str]:
    """The statistic a latency object is judged by: (p99_ms, "p99") if measured, else p50."""
    stat = "p99" if latency.get("kind") == "measured" else "p50"
    return latency.get(f"{stat}_ms"), stat


def latencies(part: dict) -> list[tuple[str, dict]]:
    """(key, latency object) of a teacher, student or engine, in LATENCY_KEYS order."""
    return [(k, part[k]) for k in LATENCY_KEYS if isinstance(part.get(k), dict)]


def accuracy_value(acc: dict | None, task: str | None = None) -> tuple[str | None, float | None]:
    """(metric, value) of an accuracy object: the REPORT.md form {"metric", "value"}, or a flat
    dict of `metrics.compute` results read at the task's primary metric."""
    acc = acc or {}
    if "value" in acc:
        return acc.get("metric"), acc["value"]
    metric = primary_metric(task) if task else "accuracy"
    return (metric, acc[metric]) if acc.get(metric) is not None else (None, None)


def chosen_precision(report: dict) -> str | None:
    return (report.get("student") or {}).get("precision")


def _of_precision(report: dict) -> list[dict]:
    """The engines of the chosen precision, and the one that ships (a TensorRT engine of an FP32
    student is built FP16)."""
    prec = chosen_precision(report)
    return [
        e
        for e in report.get("engines") or []
        if prec is None or e.get("precision") == prec or e.get("ships")
    ]


def shipped_engine(report: dict) -> dict | None:
    """The engine flagged `ships` (the target's engine, which may be a device bundle), else the
    first built engine of the chosen precision (see the module docstring)."""
    flagged = next((e for e in report.get("engines") or [] if e.get("ships")), None)
    return flagged or next((e for e in _of_precision(report) if e.get("status") == "built"), None)


def _target_measurable(report: dict) -> bool:
    target = report.get("target") or {}
    return bool(target.get("measurable", target.get("name") == "host"))


def _shipped(report: dict) -> dict:
    eng = shipped_engine(report)
    if eng is None:
        raise Undetermined(f"no built engine of precision {chosen_precision(report)}")
    return eng


def _target_object(report: dict, keys: tuple[str, ...]) -> tuple[dict, dict]:
    """(engine, object) among the engines' `keys` objects that stands for the target."""
    ordered = sorted(_of_precision(report), key=lambda e: not e.get("ships"))  # shipped first
    found = [(e, e[k]) for e in ordered for k in keys if isinstance(e.get(k), dict)]
    on_target = _target_measurable(report)
    for kind in ("measured", "predicted"):
        for eng, obj in found:
            if obj.get("kind") == kind and (
                kind == "predicted" or on_target or obj.get("on_target")
            ):
                return eng, obj
    what = keys[0]
    if found:
        target = (report.get("target") or {}).get("name", "the target")
        raise Undetermined(  # (a measurable target's own timing returned above)
            f"{what} was measured only off the target "
            f"({found[0][1].get('device', 'on the build machine')}) and not predicted: on "
            f"{target} only the TensorRT engine of a run compressed for it is (its profile's "
            "latency model is TensorRT's)"
        )
    raise Undetermined(f"no engine of precision {chosen_precision(report)} reports {what}")


TAIL_RATIO = 2.0  # a p99 above this multiple of the p50 gets a note


def _latency(report: dict) -> Reading:
    eng, lat = _target_object(report, LATENCY_KEYS)
    value, stat = headline_latency(lat)
    if value is None:
        raise Undetermined(f"{engine_label(eng)} latency has no {stat}_ms")
    note = (
        _tail_note(lat)
        if stat == "p99"
        else (
            f"predicted p50 ({lat.get('model', 'model?')}, calibrated from "
            f"{lat.get('calibrated_from', 'unknown')}); a prediction has no p99"
        )
    )
    label = engine_label(eng) + on_dla_core(lat)
    return Reading(float(value), lat["kind"], label, note, unjudged=_too_few_runs(lat, stat))


def _too_few_runs(lat: dict, stat: str) -> str:
    """Why a measured `stat` of fewer timed runs than MIN_RUNS is not judged, and the fix; ''
    where it has enough, or its runs are not recorded."""
    need, n = MIN_RUNS.get(stat), lat.get("iterations")
    if need is None or not n or n >= need:
        return ""
    return f"not judged: {stat} from {n} runs (needs >= {need}); {runs_fix(lat, need)}"


def _tail_note(lat: dict) -> str:
    """For a p99 over TAIL_RATIO × its p50: the ratio and cv, since a busy or throttled machine
    inflates the tail."""
    p50, p99, cv = lat.get("p50_ms"), lat.get("p99_ms"), lat.get("cv")
    if not p50 or p99 is None or p99 <= TAIL_RATIO * p50:
        return ""
    spread = f", cv {cv:.0%}" if cv is not None else ""
    return (
        f"p99 is {p99 / p50:.1f}× the p50 ({p50:.3g} ms{spread}): a busy or throttled machine "
        "inflates the tail; re-run verify on an idle machine"
    )


def _memory(report: dict) -> Reading:
    eng, mem = _target_object(report, ("memory", "target_memory"))
    key = MEMORY_MB[mem["kind"]]
    if mem.get(key) is None:
        raise Undetermined(f"{engine_label(eng)} {mem['kind']} memory has no {key}")
    note = f"{mem['kind']} {key}"
    if mem["kind"] == "predicted":
        note += f" ({mem['model']})" if mem.get("model") else ""
        note += (
            ": weights + peak live activations only; the runtime (ONNX Runtime, or TensorRT and "
            "the CUDA context, hundreds of MB on a Jetson) is not included"
        )
    # a TensorRT engine taking a range of batches: its memory at the largest
    return Reading(float(mem[key]), mem["kind"], engine_label(eng), note, mem.get("batch"))


def _size(report: dict) -> Reading:
    eng = _shipped(report)
    if eng.get("size_mb") is None:
        raise Undetermined(f"{engine_label(eng)} has no size_mb")
    return Reading(float(eng["size_mb"]), "measured", engine_label(eng), eng.get("size_note", ""))


def stand_in(acc: dict | None) -> str | None:
    """How an accuracy that is not its engine's own was made (its `stand_in`: `qdq-in-float`,
    the INT8 graph run with Q/DQ in float; `fp32-graph`, the FP32 graph an FP16 engine is built
    from), else None. Reports from before the field name only the Q/DQ one, by its engine."""
    acc = acc or {}
    legacy = "qdq-in-float" if "qdq-simulated" in str(acc.get("engine", "")) else None
    return acc.get("stand_in") or legacy


def _accuracies(report: dict) -> tuple[float, float, str]:
    """(teacher value, shipped engine value, engine label) of the same metric."""
    task = report.get("task")
    t_metric, teacher = accuracy_value((report.get("teacher") or {}).get("accuracy"), task)
    if teacher is None:
        raise Undetermined("the teacher has no accuracy")
    eng = _shipped(report)
    metric, value = accuracy_value(eng.get("accuracy"), task)
    if value is None:
        raise Undetermined(f"{engine_label(eng)} has no accuracy")
    if metric != t_metric:
        raise Undetermined(
            f"teacher metric {t_metric} differs from {engine_label(eng)} metric {metric}"
        )
    acc = eng.get("accuracy") or {}
    label = (
        f"{engine_label(eng)}, measured on {acc.get('engine')}"
        if stand_in(acc)
        else engine_label(eng)
    )  # a stand-in engine is named; the engine itself is not repeated
    return float(teacher), float(value), label


def _accuracy_drop(report: dict) -> Reading:
    teacher, student, label = _accuracies(report)
    acc = _shipped(report).get("accuracy") or {}
    ci = acc.get("accuracy_drop_ci95")  # classification only, where the metric is accuracy
    note = (
        f"95 % interval {ci[0]:.3f} to {ci[1]:.3f} (paired over {acc.get('n', '?')} eval rows)"
        if ci
        else ""
    )
    return Reading(round(teacher - student, 6), "measured", label, note)


def _percent_degradation(report: dict) -> Reading:
    teacher, student, label = _accuracies(report)
    if teacher <= 0:
        raise Undetermined("teacher accuracy is 0: a relative drop is undefined")
    return Reading(round((teacher - student) / teacher * 100, 4), "measured", label)


@dataclass(frozen=True)
class Constraint:
    limit_key: str  # the key in config `constraints` / profile `defaults`
    read: Callable[[dict], Reading]


CONSTRAINTS: dict[str, Constraint] = {
    "latency_p99_ms": Constraint("latency_budget_ms", _latency),
    "accuracy_drop": Constraint("max_accuracy_drop", _accuracy_drop),
    "percent_max_degradation": Constraint("percent_max_degradation", _percent_degradation),
    "memory_mb": Constraint("max_memory_mb", _memory),
    "size_mb": Constraint("max_size_mb", _size),
}


def _limits(constraints: dict, profile_defaults: dict) -> dict[str, tuple[float, str]]:
    """limit_key -> (limit, "config"|"profile"); the config's value wins over the profile's."""
    known = {c.limit_key for c in CONSTRAINTS.values()}
    unknown = sorted(set(constraints) - known)
    if unknown:
        raise UserError(
            f"unknown constraint '{unknown[0]}'",
            field="constraints",
            fix=f"use one of {', '.join(sorted(known))}",
        )
    out = {}
    for key in known:
        for origin, source in (("config", constraints), ("profile", profile_defaults)):
            if source.get(key) is not None:
                out[key] = (float(source[key]), origin)
                break
    return out


def evaluate_constraints(report: dict, constraints: dict, profile_defaults: dict) -> list[dict]:
    """REPORT.md constraint rows for every constraint that has a limit, in CONSTRAINTS order,
    then the `device_parity` rows."""
    limits = _limits(constraints or {}, profile_defaults or {})
    rows = []
    for name, spec in CONSTRAINTS.items():
        if spec.limit_key not in limits:
            continue
        limit, origin = limits[spec.limit_key]
        try:
            r = spec.read(report)
        except Undetermined as e:
            rows.append(
                {
                    "name": name,
                    "limit": limit,
                    "value": None,
                    "source": None,
                    "pass": False,
                    "engine": None,
                    "limit_from": origin,
                    "reason": str(e),
                }
            )
            continue
        row = {
            "name": name,
            "limit": limit,
            "value": r.value,
            "source": r.source,
            "pass": r.value <= limit and not r.unjudged,
            "engine": r.engine,
            "limit_from": origin,
        }
        if r.unjudged:
            row["reason"] = r.unjudged
        if r.note:
            row["note"] = r.note
        if r.batch is not None:
            row["batch"] = r.batch
        rows.append(row)
    return rows + _device_parity_rows(report)


def not_the_engine(runner: str, why: str = "") -> str:
    """Why a device parity check made by `runner` (parity.py's fallback when tensorrt does not
    import) says nothing of the TensorRT engine, and the fix."""
    return (
        f"parity was checked with {runner} on model.onnx, not the TensorRT engine (model.plan)"
        + (f" ({why})" if why else "")
        + ": run bench.sh with a Python that imports tensorrt (PYTHON=/usr/bin/python3 "
        "./bench.sh: JetPack's, or a venv made with --system-site-packages)"
    )


def _device_parity_rows(report: dict) -> list[dict]:
    """A `device_parity` row per engine whose parity the device checked (module docstring)."""
    rows = []
    for e in report.get("engines") or []:
        p = e.get("parity") or {}
        if not p.get("on_target"):
            continue
        runner = p.get("runner")
        of_engine = runner in (None, "tensorrt")  # None: nothing ran; another: not the engine
        cosine = p.get("cosine") if of_engine else None
        row = {
            "name": "device_parity",
            "limit": p["cosine_floor"],
            "value": cosine,
            "source": "measured" if cosine is not None else None,
            "pass": p.get("passed") is True and of_engine,
            "engine": engine_label(e),
            "limit_from": "bundle",
        }
        where = f"runner {runner or 'none'} on {p.get('device', 'the device')}"
        if not of_engine:
            row["reason"] = f"{not_the_engine(runner, '; '.join(p.get('notes') or []))} ({where})"
        elif p.get("cosine") is None:
            why = p.get("error") or "not checked: " + (
                "; ".join(p.get("notes") or []) or "no runner could run"
            )
            row["reason"] = f"{why} ({where})"
        else:
            agree, floor = p.get("argmax_agreement"), p.get("agreement_floor")
            row["note"] = (
                f"{where}"
                + (f", argmax agreement {agree:.3f}" if agree is not None else "")
                + (f" (floor {floor:g})" if floor is not None else "")
                + (f" over {p['n']} golden rows" if p.get("n") is not None else "")
            )
            if p.get("failed_batches"):
                row["reason"] = (
                    f"the engine's outputs at batch {', '.join(map(str, p['failed_batches']))} "
                    "differ from the goldens (this value is the tuned batch's)"
                )
            elif floor is not None and agree is not None and agree < floor:
                row["reason"] = (
                    f"the engine gives another class than the goldens on {1 - agree:.0%} of "
                    f"the rows (argmax agreement {agree:.3f}, floor {floor:g})"
                )
        rows.append(row)
    return rows


def checked_nothing(report: dict) -> bool:
    """A pass with no constraint row: vacuous (a CI gate on it passes any student)."""
    return report.get("passed") is True and not report.get("constraints")


ACCURACY_ROWS = {"accuracy_drop", "percent_max_degradation"}  # read from the shipped engine


def ungated(report: dict) -> list[str]:
    """What a report with constraints did not gate: latency without a budget (the host profile
    has none), accuracy without `max_accuracy_drop` or `percent_max_degradation` (no profile
    sets one) where an engine shipped; none where nothing at all was checked."""
    names = {c.get("name") for c in report.get("constraints") or []}
    if not names:
        return []
    target = (report.get("target") or {}).get("name", "the target")
    notes = [
        f"latency not gated: no constraints.latency_budget_ms, and {target}'s profile sets no "
        "default budget (set one to gate it)"
    ] * ("latency_p99_ms" not in names)
    if not names & ACCURACY_ROWS and shipped_engine(report):
        notes.append(
            "accuracy not gated: no constraints.max_accuracy_drop or percent_max_degradation "
            "(set one to gate the shipped engine's accuracy against the teacher's)"
        )
    return notes


def verdict(report: dict) -> str:
    """PASSED, FAILED or 'not evaluated'; a vacuous pass (`checked_nothing`) says so, and a pass
    that rests on predicted figures names them (a PASS read as timed on the board would not be)."""
    if checked_nothing(report):
        return "PASSED (no constraints set: nothing was checked)"
    said = {True: "PASSED", False: "FAILED"}.get(report.get("passed"), "not evaluated")
    rows = [c for c in report.get("constraints") or [] if c.get("pass") is True]
    guessed = [c["name"] for c in rows if c.get("source") == "predicted"]
    shipped = shipped_engine(report) or {}
    stood = [c["name"] for c in rows if c["name"] in ACCURACY_ROWS]
    stood = stood if stand_in(shipped.get("accuracy")) else []
    if said == "PASSED" and (guessed or stood):
        target = (report.get("target") or {}).get("name", "the target")
        parts = [f"{', '.join(guessed)} predicted"] * bool(guessed)
        parts += [f"{', '.join(stood)} from a stand-in run here"] * bool(stood)
        said += f" (not measured on {target}: {'; '.join(parts)})"
    return said


def passed(rows: list[dict]) -> bool:
    """True when every constraint row passed (and vacuously when there are none)."""
    return all(r.get("pass") is True for r in rows)


def value_and_engine(row: dict) -> str:
    """`predicted p50, tensorrt-int8`: how a constraint row's value was made and by which engine
    (none named: a search that found no student)."""
    return ", ".join(str(x) for x in (value_kind(row), row.get("engine")) if x)


def value_kind(row: dict) -> str | None:
    """How a constraint row's value was made: `measured`, `predicted`, or `predicted p50` where a
    p99 limit is judged on a prediction (which has no tail)."""
    kind = row.get("source")
    kind = "predicted p50" if kind == "predicted" and row["name"].endswith("p99_ms") else kind
    return kind and kind + at_batch(row.get("batch"))


def at_batch(batch: object) -> str:
    """` at batch N` for a figure of more than one row (a TensorRT engine's memory at the
    largest batch it takes), else ''."""
    return f" at batch {batch}" if isinstance(batch, int) and batch > 1 else ""
