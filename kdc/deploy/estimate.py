"""The analytic latency model "roofline-v1": each fused kernel takes
max(FLOPs / (peak × compute efficiency), bytes / (bandwidth × memory efficiency)) plus a fixed
launch overhead, summed over the kernels of the graph, plus a per-call overhead; masked
(padding) attention scores are costed as `MASKED` pseudo-kernels at their own efficiency. Peaks
and bandwidth come from the profile's datasheet figures, the efficiencies and overheads from its
`latency_model` (fitted to published or measured timings with `fit_latency_model`). Every number
here is a prediction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.table import Table

from kdc.deploy.arch_cost import analyze_architecture
from kdc.deploy.graph_cost import analyze_onnx
from kdc.deploy.kernels import (
    MASKED,
    TENSOR_KINDS,
    GraphCost,
    Kernel,
    check_precision,
    launches,
    materialize,
    memory_bytes,
)
from kdc.errors import UserError
from kdc.profiles import HardwareProfile

MODEL = "roofline-v1"
# the memory model of `predict_memory_mb`, named in every memory figure it predicts
MEMORY_MODEL = "weights+activations-v1"
PEAK_FIELD = {"fp32": "fp32_tflops", "fp16": "fp16_tflops", "int8": "int8_tops"}
EFFICIENCY_FIELD = {
    "fp32": "compute_efficiency",
    "fp16": "fp16_compute_efficiency",
    "int8": "int8_compute_efficiency",
}
KIND_EFFICIENCY = "kind_efficiency"


def compute_class(k: Kernel) -> str:
    """Which peak a kernel runs against: matrix kernels at their precision, the rest on the
    vector units (the fp32 peak)."""
    return k.precision if k.kind in TENSOR_KINDS else "fp32"


def _as_dict(lm: Any) -> dict[str, Any]:
    return lm if isinstance(lm, dict) else lm.model_dump()


def efficiencies(lm: Any) -> dict[str, float]:
    """Compute efficiency per class of a latency model (profile field or mapping); fp16 and
    int8 fall back to `compute_efficiency`."""
    d = _as_dict(lm)
    return {c: float(d.get(f) or d["compute_efficiency"]) for c, f in EFFICIENCY_FIELD.items()}


def efficiency_slot(k: Kernel) -> str:
    """Which efficiency a kernel runs at: its class (`fp32`, `int8`, `fp16`) for GEMMs, else
    `<class>_<group>` with group conv, attention, masked or vector (every other non-matrix
    kernel), which `latency_model.kind_efficiency` may set and otherwise falls back to the
    class's (masked scores: to free, as on an engine whose softmax does not slow down on them)."""
    cls = compute_class(k)
    if k.kind == "gemm":
        return cls
    return f"{cls}_{k.kind if k.kind in (*TENSOR_KINDS, MASKED) else 'vector'}"


def _masked(slot: str) -> bool:
    return slot.endswith(f"_{MASKED}")


def slot_efficiency(slot: str, lm: Any) -> float:
    """The compute efficiency of an `efficiency_slot` under a latency model."""
    d = _as_dict(lm)
    base = float("inf") if _masked(slot) else efficiencies(d)[slot.split("_")[0]]
    return float((d.get("kind_efficiency") or {}).get(slot, base))


def ideal_times(
    kernels: Sequence[Kernel], profile: HardwareProfile
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per kernel: seconds at 100 % of the compute peak, at 100 % of bandwidth, and its
    efficiency slot."""
    peaks = {c: getattr(profile.compute, f) * 1e12 for c, f in PEAK_FIELD.items()}
    bw = profile.memory.bandwidth_gbps * 1e9
    c = np.array([k.flops / peaks[compute_class(k)] for k in kernels], dtype=float)
    m = np.array([k.bytes / bw for k in kernels], dtype=float)
    return c, m, [efficiency_slot(k) for k in kernels]


def kernel_times_s(
    kernels: Sequence[Kernel], profile: HardwareProfile, latency_model: Any = None
) -> np.ndarray:
    """Per kernel seconds (rows: compute, memory, overhead) under `latency_model` (default: the
    profile's)."""
    lm = _as_dict(latency_model if latency_model is not None else profile.latency_model)
    c, m, slots = ideal_times(kernels, profile)
    eff = {s: slot_efficiency(s, lm) for s in set(slots)}
    return np.vstack(
        [
            c / np.array([eff[s] for s in slots]),
            m / float(lm["memory_efficiency"]),
            np.array([k.kind != MASKED for k in kernels], float)
            * float(lm["kernel_overhead_us"])
            * 1e-6,
        ]
    )


def predict_kernels_ms(
    kernels: Sequence[Kernel], profile: HardwareProfile, latency_model: Any = None
) -> float:
    """Predicted latency of a kernel list (one inference call) in milliseconds."""
    if not len(kernels):
        return 0.0
    lm = _as_dict(latency_model if latency_model is not None else profile.latency_model)
    return float(kernel_ms(kernel_times_s(kernels, profile, lm)).sum() + _call_ms(lm))


def kernel_ms(t: np.ndarray) -> np.ndarray:
    """Per kernel milliseconds from `kernel_times_s` rows: max(compute, memory) + overhead."""
    return (np.maximum(t[0], t[1]) + t[2]) * 1e3


def _call_ms(lm: dict[str, Any]) -> float:
    return float(lm.get("call_overhead_us") or 0.0) / 1e3


def _float_precision(precision: str, profile: HardwareProfile) -> str:
    return "fp16" if precision != "fp32" and "fp16" in profile.runtime.precisions else "fp32"


def _check(precision: str, batch: int, profile: HardwareProfile) -> None:
    check_precision(precision)
    if precision not in profile.runtime.precisions:
        raise UserError(
            f"target {profile.name} does not run {precision}",
            field="precision",
            fix=f"use one of {', '.join(profile.runtime.precisions)}",
        )
    if int(batch) < 1:
        raise UserError(f"batch must be >= 1, got {batch}", field="batch", fix="use 1 or more")


def _breakdown(
    kernels: Sequence[Kernel], t: np.ndarray, names: Sequence[str] | None = None
) -> list[dict]:
    """Kernel groups (by kind, or by `names`, one per kernel) with their time and bound."""
    groups: dict[str, dict] = defaultdict(
        lambda: {"count": 0, "flops": 0.0, "bytes": 0.0, "ms": 0.0, "_bound": np.zeros(3)}
    )
    names = names or [k.kind for k in kernels]
    for k, name, (tc, tm, to) in zip(kernels, names, t.T, strict=True):
        g = groups[name]
        g["count"] += 1
        g["flops"] += k.flops
        g["bytes"] += k.bytes
        g["ms"] += (max(tc, tm) + to) * 1e3
        g["_bound"][int(np.argmax([tc, tm, to]))] += max(tc, tm, to)
    rows = []
    for kind, g in groups.items():
        if kind.startswith(MASKED) and not g["ms"]:
            continue  # padding costs nothing on an engine not calibrated with it
        bound = ("compute", "memory", "overhead")[int(np.argmax(g.pop("_bound")))]
        rows.append({"group": kind, **g, "ms": round(g["ms"], 6), "bound": bound})
    return sorted(rows, key=lambda r: -r["ms"])


def _result(
    cost: GraphCost,
    profile: HardwareProfile,
    precision: str,
    batch: int,
    explain: bool,
    padding: float = 0.0,
    dla_core: int | None = None,
) -> dict:
    kernels = materialize(cost, precision, _float_precision(precision, profile), padding)
    if dla_core is None:
        ms, how = predict_kernels_ms(kernels, profile), _how(profile)
    else:  # a TensorRT engine built for a DLA core, GPU fallback
        ms, how = _dla_prediction(kernels, profile, precision, dla_core, explain)
    out = {
        "kind": "predicted",
        **how,
        "target": profile.name,
        "precision": precision,
        "batch": int(batch),
        "input_shape": cost.input_shapes,
        "padding": round(float(padding), 4),
        "p50_ms": float(f"{ms:.4g}"),
        "flops": float(sum(k.flops for k in kernels)),
        "bytes": float(sum(k.bytes for k in kernels)),
        "kernels": launches(kernels),
    }
    if cost.unknown_shapes:
        out["warnings"] = [
            f"{cost.unknown_shapes} tensors had no inferred shape and were costed as empty"
        ]
    if explain and dla_core is None:  # (a DLA prediction brings its own)
        rows = _breakdown(kernels, kernel_times_s(kernels, profile))
        out["breakdown"] = rows + _call_row(profile)
    return out


def _call_row(profile: HardwareProfile) -> list[dict]:
    """The breakdown's row for the per-call overhead, where the latency model has one."""
    call = _call_ms(_as_dict(profile.latency_model))
    row = {"group": "call", "count": 1, "flops": 0.0, "bytes": 0.0, "ms": call}
    return [{**row, "bound": "overhead"}] if call else []


def _how(profile: HardwareProfile) -> dict:
    """How a roofline-v1 prediction is made: model, calibration, predictor hash."""
    return {
        "model": MODEL,
        "calibrated_from": profile.latency_model.source,
        "predictor_sha256": profile.predictor_sha256(),
    }


def _dla_prediction(
    kernels: list[Kernel], profile: HardwareProfile, precision: str, dla_core: int, explain: bool
) -> tuple[float, dict]:
    """(ms, how it was made and where the kernels ran) on DLA core `dla_core`
    (kdc.deploy.dla); with `explain`, a `breakdown` by kernel kind and unit (DLA or GPU)."""
    from kdc.deploy import dla

    dla.check_dla(profile, dla_core, precision, precision_field="precision")
    placed = dla.predict_dla_ms(kernels, profile)
    assert profile.dla is not None
    breakdown = {"breakdown": _dla_breakdown(kernels, profile, placed)} if explain else {}
    return placed["p50_ms"], {
        **breakdown,
        "model": dla.MODEL,
        "calibrated_from": profile.dla.source,
        "predictor_sha256": dla.dla_predictor_sha256(profile),
        "dla_core": dla_core,
        "dla_kernels": placed["dla_kernels"],
        "gpu_fallback_kernels": placed["gpu_kernels"],
        "transitions": placed["transitions"],
    }


def _dla_breakdown(kernels: list[Kernel], profile: HardwareProfile, placed: dict) -> list[dict]:
    """`_breakdown` of a DLA prediction: kernel kinds on the DLA and on the GPU, the switches
    between them and the call."""
    t, on = placed["times_s"], placed["on_dla"]
    names = [f"{k.kind} ({'DLA' if d else 'GPU'})" for k, d in zip(kernels, on, strict=True)]
    rows = _breakdown(kernels, t, names)
    if placed["transitions"]:
        ms = placed["transitions_ms"]
        row = {"group": "DLA<->GPU switches", "count": placed["transitions"], "ms": ms}
        rows.append({**row, "flops": 0.0, "bytes": 0.0, "bound": "overhead"})
    return rows + _call_row(profile)


def onnx_kernels(
    model_or_path: onnx.ModelProto | str | Path,
    profile: HardwareProfile,
    *,
    precision: str = "fp32",
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    padding: float = 0.0,
) -> list[Kernel]:
    """The kernels `predict_onnx` costs, at the precisions they run at on `profile` (what
    `fit_latency_model` takes with a timing)."""
    _check(precision, batch, profile)
    cost = analyze_onnx(model_or_path, batch=batch, input_shapes=input_shapes)
    return materialize(cost, precision, _float_precision(precision, profile), padding)


def predict_onnx(
    model_or_path: onnx.ModelProto | str | Path,
    profile: HardwareProfile,
    *,
    precision: str = "fp32",
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    explain: bool = False,
    padding: float = 0.0,
    dla_core: int | None = None,
) -> dict:
    """Predicted latency of an ONNX model on `profile` (a REPORT.md latency object of kind
    `predicted`, with a per kernel-group `breakdown` when `explain`); `padding` is the fraction
    of attention-mask positions that are 0 in the input it is predicted for; `dla_core`: a
    TensorRT engine built for that DLA core (model roofline-v1+dla, kdc.deploy.dla)."""
    _check(precision, batch, profile)
    cost = analyze_onnx(model_or_path, batch=batch, input_shapes=input_shapes)
    return _result(cost, profile, precision, batch, explain, padding, dla_core)


def predict_architecture(
    arch: dict[str, Any],
    profile: HardwareProfile,
    *,
    precision: str = "fp32",
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    explain: bool = False,
    padding: float = 0.0,
    dla_core: int | None = None,
) -> dict:
    """Like `predict_onnx`, from an architecture dict, without exporting (for the search)."""
    _check(precision, batch, profile)
    cost = analyze_architecture(arch, batch=batch, input_shapes=input_shapes)
    return _result(cost, profile, precision, batch, explain, padding, dla_core)


def predict_memory_mb(
    model_or_path: onnx.ModelProto | str | Path,
    precision: str,
    batch: int,
    input_shapes: dict[str, list[int]] | None = None,
) -> float:
    """Predicted engine memory by MEMORY_MODEL: weights at their run precision plus the peak of
    live activations (MiB)."""
    check_precision(precision)
    cost = analyze_onnx(model_or_path, batch=batch, input_shapes=input_shapes)
    return round(memory_bytes(cost, precision) / 2**20, 3)


def explain_table(pred: dict) -> Table:
    """The breakdown of a prediction made with explain=True, as a rich table (what the model
    was calibrated from is in the line `kdc estimate` prints above it)."""
    table = Table(
        title=f"{pred['target']} {pred['precision']} batch {pred['batch']}: "
        f"{pred['p50_ms']:.4g} ms predicted ({pred['model']}, "
        f"{pred['kernels']} kernels)"
    )
    for col, justify in [
        ("kernels", "left"),
        ("count", "right"),
        ("GFLOP", "right"),
        ("MB moved", "right"),
        ("ms", "right"),
        ("share", "right"),
        ("bound", "left"),
    ]:
        table.add_column(col, justify=justify)
    total = sum(r["ms"] for r in pred.get("breakdown", [])) or 1.0
    for r in pred.get("breakdown", []):
        table.add_row(
            r["group"],
            str(r["count"]),
            f"{r['flops'] / 1e9:.3f}",
            f"{r['bytes'] / 1e6:.2f}",
            f"{r['ms']:.4f}",
            f"{r['ms'] / total:.0%}",
            r["bound"],
        )
    return table


# ---------------------------------------------------------------------------------------------
# Fitting the latency model to timings

Sample = tuple[Sequence[Kernel], float]
OVERHEADS = ("kernel_overhead_us", "call_overhead_us")
_STARTS = [(o, e, me) for o in (2.0, 20.0) for e in (0.1, 0.6) for me in (0.2, 0.8)]


def _parameter(slot: str) -> str:
    return EFFICIENCY_FIELD.get(slot, f"{KIND_EFFICIENCY}.{slot}")


def _prior(lm: Any, names: Sequence[str]) -> dict[str, float]:
    d = _as_dict(lm)
    out = {
        "kernel_overhead_us": float(d["kernel_overhead_us"]),
        "call_overhead_us": float(d.get("call_overhead_us") or 0.0),
        "memory_efficiency": float(d["memory_efficiency"]),
        **{EFFICIENCY_FIELD[c]: e for c, e in efficiencies(d).items()},
    }
    for n in names:
        if n.startswith(KIND_EFFICIENCY):
            out[n] = slot_efficiency(n.split(".", 1)[1], d)
    return out


def fit_latency_model(
    samples: Sequence[Sample],
    profile: HardwareProfile,
    *,
    fixed: dict[str, float] | None = None,
    per_kind: bool = False,
) -> tuple[dict, list[str]]:
    """Fit kernel_overhead_us, memory_efficiency and a compute efficiency per precision that
    appears in `samples` (kernel lists with measured milliseconds) by least squares on relative
    error; with `per_kind`, conv, attention, masked and vector kernels get their own efficiency
    per precision too (`kind_efficiency`) and a per-call overhead is fitted (`call_overhead_us`).
    A factor no sample constrains keeps the profile's value; `fixed` pins factors. Returns a
    `latency_model` mapping and the names of the factors fitted."""
    from scipy.optimize import least_squares

    if len(samples) < 2:
        raise UserError(
            f"need at least 2 timed samples to fit, got {len(samples)}",
            field="samples",
            fix="time more models or batch sizes",
        )
    fixed = dict(fixed or {})
    lm = profile.latency_model
    data = []
    for kernels, ms in samples:
        c, m, slots = ideal_times(kernels, profile)
        keys = [_parameter(s if per_kind or _masked(s) else s.split("_")[0]) for s in slots]
        data.append((c, m, keys, launches(kernels), float(ms) * 1e-3))
    used = sorted({k for *_, keys, _, _ in data for k in keys})
    names = ["kernel_overhead_us", *(["call_overhead_us"] * per_kind), "memory_efficiency", *used]
    prior = _prior(lm, names)
    free = [n for n in names if n not in fixed]
    data = [
        (c, m, np.array([names.index(k) for k in keys], dtype=int), n, y)
        for c, m, keys, n, y in data
    ]

    def unpack(x: np.ndarray) -> dict[str, float]:
        return {**prior, **fixed, **dict(zip(free, x, strict=True))}

    def residuals(x: np.ndarray) -> np.ndarray:
        p = unpack(x)
        vals = np.array([p[n] for n in names])
        pred = np.array(
            [
                np.maximum(c / vals[ix], m / p["memory_efficiency"]).sum()
                + n * p["kernel_overhead_us"] * 1e-6
                + p["call_overhead_us"] * 1e-6
                for c, m, ix, n, _ in data
            ]
        )
        return pred / np.array([y for *_, y in data]) - 1.0

    lower = [0.0 if n in OVERHEADS else 1e-3 for n in free]
    upper = [1e4 if n in OVERHEADS else 1.0 for n in free]
    best = None
    for o, e, me in _STARTS:
        x0 = [o if n in OVERHEADS else me if n == "memory_efficiency" else e for n in free]
        r = least_squares(
            residuals, x0, bounds=(lower, upper), x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12
        )
        if best is None or r.cost < best.cost:
            best = r
    fit = unpack(best.x)
    jac = np.abs(best.jac).sum(axis=0) if best.jac.size else np.zeros(len(free))
    unconstrained = [n for n, j in zip(free, jac, strict=True) if j <= 1e-6 * jac.max()]
    for n in unconstrained:
        fit[n] = prior[n]
    err = np.abs(residuals(np.array([fit[n] for n in free])))
    out = {
        "kernel_overhead_us": round(float(fit["kernel_overhead_us"]), 3),
        "call_overhead_us": round(float(fit["call_overhead_us"]), 3),
        "compute_efficiency": round(float(fit["compute_efficiency"]), 4),
        "memory_efficiency": round(float(fit["memory_efficiency"]), 4),
    }
    for c in ("int8", "fp16"):
        f = EFFICIENCY_FIELD[c]
        if f in names and f not in unconstrained:
            out[f] = round(float(fit[f]), 4)
        elif getattr(lm, f) is not None:
            out[f] = getattr(lm, f)
    kinds = dict(lm.kind_efficiency or {})
    for n in names:
        if n.startswith(KIND_EFFICIENCY) and n not in unconstrained:
            kinds[n.split(".", 1)[1]] = round(float(fit[n]), 4)
    if kinds:
        out[KIND_EFFICIENCY] = dict(sorted(kinds.items()))
    note = f"; kept from profile: {', '.join(unconstrained)}" if unconstrained else ""
    out["source"] = (
        f"fitted ({MODEL}) to {len(samples)} timings: median |error| "
        f"{np.median(err):.1%}, max {err.max():.1%}{note}"
    )
    return out, [n for n in free if n not in unconstrained]
