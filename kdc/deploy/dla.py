"""Latency of a TensorRT engine built for a Jetson DLA core (`build.dla_core`), "roofline-v1+dla".

TensorRT runs each layer DLA supports on the core and the rest on the GPU (GPU_FALLBACK), with a
reformat at every switch. The model places each fused kernel by its ops (`DLA_OPS`, an
approximate table; attention's MatMul of two activations and its Softmax run on the GPU), times
DLA kernels as max(FLOPs / (DLA peak × efficiency), bytes / (bandwidth × the GPU model's memory
efficiency)) at the core's int8 or fp16 peak (DLA has no fp32) plus a per-layer overhead, GPU
kernels by the profile's roofline-v1 model, and adds `transition_us` per switch and the call
overhead. The peaks and factors are the profile's `dla` block, with their sources (fitted by
bench/fit_dla.py to published DLA timings, or by `fit_dla` to a device's timings: `kdc calibrate
--bundle DIR --dla-core N`, then `--from DIR`). Every number here is a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdc.deploy.kernels import MASKED, TENSOR_KINDS, Kernel, launches
from kdc.errors import UserError
from kdc.profiles import Dla, HardwareProfile
from kdc.rundir import sha256_json

MODEL = "roofline-v1+dla"

# Approximate DLA layer table (ONNX ops that map to DLA-capable layers; TensorRT docs,
# "DLA Supported Layers and Restrictions", summarised).
# fmt: off
DLA_OPS = frozenset([
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu",
    "PRelu", "Add", "Sub", "Mul", "Max", "Min", "Div", "Pow", "Equal", "Greater", "Less",
    "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "LRN", "Resize", "Upsample", "Softmax", "Slice", "Reshape", "Transpose",
    "Flatten", "Squeeze", "Unsqueeze", "ReduceMax", "Abs", "Sin", "Cos", "Atan", "Identity",
    "Constant", "QuantizeLinear", "DequantizeLinear"
])
# fmt: on
GPU_KINDS = frozenset({"attention", MASKED})  # MatMul of two activations; its masked scores


def on_dla(k: Kernel) -> bool:
    """Whether TensorRT would place the kernel on the DLA (every op in `DLA_OPS`)."""
    return k.kind not in GPU_KINDS and bool(k.ops) and all(op in DLA_OPS for op in k.ops)


def check_dla_core(profile: HardwareProfile, dla_core: int, field: str = "build.dla_core") -> None:
    """A UserError unless `profile` has DLA core `dla_core`."""
    cores = profile.runtime.dla_cores
    if cores <= 0:
        raise UserError(
            f"{profile.name} has no DLA core",
            field=field,
            fix=("drop it to build for the GPU, or" if profile.runtime.tensorrt else "drop it, or")
            + " target a Jetson with DLA (AGX Orin, Orin NX)",
        )
    if not 0 <= dla_core < cores:
        raise UserError(
            f"{profile.name} has {cores} DLA cores, numbered from 0: no core {dla_core}",
            field=field,
            fix=f"use a core from 0 to {cores - 1}",
        )


def check_one_shape(max_batch: int | None, source: str | None = None) -> None:
    """A UserError when a DLA engine is asked for a range of batches (build.max_batch)."""
    if max_batch is not None:
        raise UserError(
            "a DLA engine takes one input shape, not a range of batches",
            source=source,
            field="build.max_batch",
            fix="drop build.max_batch to build for DLA, or drop build.dla_core",
        )


def check_dla(
    profile: HardwareProfile,
    dla_core: int,
    precision: str,
    *,
    field: str = "build.dla_core",
    precision_field: str = "quantize.precision",
) -> None:
    """A UserError unless a `precision` engine on DLA core `dla_core` of `profile` can be
    predicted: the core exists, DLA runs the precision, the profile has a `dla` block."""
    check_dla_core(profile, dla_core, field)
    if precision == "fp32":
        raise UserError(
            "DLA runs fp16 or int8 only",
            field=precision_field,
            fix="use int8 or fp16 on a DLA core, or build for the GPU",
        )
    if profile.dla is None:
        raise UserError(
            f"{profile.name} has DLA cores but no `dla` latency block, so a DLA engine's latency "
            "cannot be predicted",
            source=profile.name,
            field="dla",
            fix="add dla: {int8_tops, fp16_tflops, compute_efficiency, layer_overhead_us, "
            "transition_us, source} (per core, dense) to the profile",
        )


def predict_dla_ms(kernels: Sequence[Kernel], profile: HardwareProfile) -> dict:
    """{p50_ms, dla_kernels, gpu_kernels, transitions, transitions_ms, times_s, on_dla} of one
    call on a DLA core with GPU fallback (kernel counts: launched kernels; `times_s`: the
    `kernel_times_s` rows, the DLA's for the kernels on it). Needs `profile.dla`."""
    assert profile.dla is not None
    block = profile.dla.model_dump(exclude={"source"})
    placed = _placement(kernels, profile)
    on = placed["on"]
    t = placed["times_s"].copy()
    t[:, on] = _dla_times_s(placed, block)
    return {
        "p50_ms": _call_ms(placed, block),
        "dla_kernels": int(on.sum()),
        "gpu_kernels": launches([k for k, d in zip(kernels, on, strict=True) if not d]),
        "transitions": placed["switches"],
        "transitions_ms": placed["switches"] * block["transition_us"] / 1e3,
        "times_s": t,
        "on_dla": on.tolist(),
    }


def fit_dla(
    samples: Sequence[tuple[Sequence[Kernel], float]], profile: HardwareProfile, source: str
) -> tuple[Dla, list[float], list[str]]:
    """Fit the `dla` block's compute efficiency and per-layer overhead to engines timed on a
    DLA core (kernel lists with measured milliseconds), by least squares on relative error;
    `transition_us` too where a sample switches between DLA and GPU, and the FP16 peak where
    samples run matrix kernels at both precisions on the DLA; the rest stays the profile's.
    GPU fallback kernels are costed by the profile's GPU model, as `predict_dla_ms` does.
    The compute efficiency is fitted only from INT8 matrix kernels (at the published INT8
    peak; FP16 timings alone fit the FP16 peak), and a factor the timings do not pin (every
    DLA kernel memory-bound, say) keeps the profile's value. Returns the block (its `source`:
    `source`, the factors fitted and the fit's error), each sample's prediction under it and
    the names of the factors fitted. A UserError when no sample has a DLA layer."""
    base = profile.dla
    assert base is not None
    parts = [_placement(kernels, profile) for kernels, _ in samples]
    if not any(len(p["flops"]) for p in parts):
        raise UserError(
            "no timed model has a layer the DLA runs: nothing to fit",
            field="dla_core",
            fix="time the calibration set kdc wrote (`kdc calibrate --bundle DIR --dla-core N`)",
        )
    measured = np.array([ms for _, ms in samples], dtype=float)
    int8 = any((p["int8"] & p["tensor"]).any() for p in parts)  # what a peak bounds
    fp16 = any((~p["int8"] & p["tensor"]).any() for p in parts)
    # efficiency is fitted at the published INT8 peak; FP16 timings alone fit the FP16 peak
    free = ["compute_efficiency"] * int8 + ["layer_overhead_us"]
    free += ["transition_us"] * any(p["switches"] for p in parts)
    free += ["fp16_tflops"] * fp16
    fixed = base.model_dump(exclude={"source"})
    kept: list[str] = []
    while True:
        x = _fit_free(parts, measured, fixed, free, base.int8_tops)
        weak = _weakest(parts, measured, fixed, free, x)
        if weak is None:
            break
        kept.append(free.pop(weak))
    values = {**fixed, **{n: round(v, 6) for n, v in zip(free, x, strict=True)}}
    pred = np.array([_call_ms(p, values) for p in parts])
    err = np.abs(pred / measured - 1.0)
    note = f"; kept from the profile (the timings do not pin them): {', '.join(kept)}" * bool(kept)
    block_source = (
        f"{source}; fitted {', '.join(free) or 'nothing'}: median |error| {np.median(err):.1%}, "
        f"max {err.max():.1%}{note}"
    )
    return Dla(**values, source=block_source), [float(v) for v in pred], free


WEAK_REL_SE = 0.5
"""A fitted factor whose standard error exceeds this share of its value (or of the profile's,
when larger) is not pinned by the timings: the profile's value is kept."""


def _fit_free(
    parts: list[dict], measured: np.ndarray, fixed: dict, free: list[str], int8_tops: float
) -> list[float]:
    """Least squares on relative error over the `free` factors, from two starts."""
    from scipy.optimize import least_squares

    if not free:
        return []
    lower, upper = zip(*(_bounds(n, int8_tops) for n in free), strict=True)
    best = None
    for eff, over in ((0.2, 2.0), (0.6, 20.0)):
        start = {"compute_efficiency": eff, "fp16_tflops": int8_tops / 2}
        r = least_squares(
            lambda x: _relative_errors(parts, measured, fixed, free, x),
            [start.get(n, over) for n in free],
            bounds=(lower, upper),
            x_scale="jac",
        )
        best = r if best is None or r.cost < best.cost else best
    return [float(v) for v in best.x]


def _bounds(name: str, int8_tops: float) -> tuple[float, float]:
    return {
        "compute_efficiency": (1e-3, 1.0),
        "layer_overhead_us": (0.0, 1e4),
        "transition_us": (0.0, 1e4),
        "fp16_tflops": (0.05 * int8_tops, int8_tops),  # never faster than INT8
    }[name]


def _relative_errors(
    parts: list[dict], measured: np.ndarray, fixed: dict, free: list[str], x: Sequence[float]
) -> np.ndarray:
    b = {**fixed, **dict(zip(free, (float(v) for v in x), strict=True))}
    return np.array([_call_ms(p, b) for p in parts]) / measured - 1.0


def _weakest(
    parts: list[dict], measured: np.ndarray, fixed: dict, free: list[str], x: list[float]
) -> int | None:
    """Index of the free factor the timings pin least, if one is not pinned (the fit ran it
    into a bound, it moves no prediction, or its standard error is over WEAK_REL_SE of its
    scale); None when every one is, or there are no more timings than factors to judge the
    error by (`fit_warnings` says so)."""
    n, k = len(measured), len(free)
    if k == 0:
        return None
    for i, name in enumerate(free):  # the fit ran into a bound: no credible value
        lo, hi = _bounds(name, fixed["int8_tops"])
        if not lo + 1e-6 * (hi - lo) < x[i] < hi - 1e-6 * (hi - lo):
            return i
    r0 = _relative_errors(parts, measured, fixed, free, x)
    jac = np.empty((n, k))
    for i in range(k):
        step = 1e-6 * max(abs(x[i]), abs(fixed[free[i]]), 1e-3)
        moved = list(x)
        moved[i] += step
        jac[:, i] = (_relative_errors(parts, measured, fixed, free, moved) - r0) / step
    scale = np.array([max(abs(v), abs(fixed[f])) for f, v in zip(free, x, strict=True)])
    influence = np.abs(jac).sum(axis=0) * scale
    if influence.min() <= 1e-6 * influence.max():  # moves no prediction at all
        return int(np.argmin(influence))
    if n <= k:
        return None
    sigma2 = float(r0 @ r0) / (n - k)
    se = np.sqrt(np.clip(np.diag(np.linalg.pinv(jac.T @ jac)) * sigma2, 0.0, None))
    rel = se / scale
    worst = int(np.argmax(rel))
    return worst if rel[worst] > WEAK_REL_SE else None


def _placement(kernels: Sequence[Kernel], profile: HardwareProfile) -> dict:
    """What a DLA prediction keeps fixed of a kernel list: where each kernel runs (`on`), the
    GPU model's `kernel_times_s` of every kernel, the GPU kernels' and the call's milliseconds,
    the DLA kernels' FLOPs, memory seconds, precision and kind, and the DLA<->GPU switches."""
    from kdc.deploy.estimate import kernel_ms, kernel_times_s

    lm = profile.latency_model
    on = np.array([on_dla(k) for k in kernels], dtype=bool)
    t = kernel_times_s(kernels, profile)
    bw = profile.memory.bandwidth_gbps * 1e9 * lm.memory_efficiency
    dla = [k for k, d in zip(kernels, on, strict=True) if d]
    return {
        "on": on,
        "times_s": t,
        "fixed_ms": float(kernel_ms(t)[~on].sum()) + lm.call_overhead_us / 1e3,
        "flops": np.array([k.flops for k in dla], dtype=float),
        "memory_s": np.array([k.bytes / bw for k in dla], dtype=float),
        "int8": np.array([k.precision == "int8" for k in dla], dtype=bool),
        "tensor": np.array([k.kind in TENSOR_KINDS for k in dla], dtype=bool),
        "switches": int((on[1:] != on[:-1]).sum()),
    }


def _dla_times_s(placed: dict, b: dict[str, float]) -> np.ndarray:
    """`kernel_times_s` rows (compute, memory, overhead) of the DLA kernels under block `b`:
    the core's int8 or fp16 peak (DLA has no fp32) and the per-layer overhead."""
    peak = np.where(placed["int8"], b["int8_tops"], b["fp16_tflops"]) * 1e12
    compute = placed["flops"] / (peak * b["compute_efficiency"])
    overhead = np.full(len(compute), b["layer_overhead_us"] * 1e-6)
    return np.vstack([compute, placed["memory_s"], overhead])


def _call_ms(placed: dict, b: dict[str, float]) -> float:
    """One call's milliseconds under block `b`: GPU kernels and call, DLA kernels, switches."""
    from kdc.deploy.estimate import kernel_ms

    dla_ms = float(kernel_ms(_dla_times_s(placed, b)).sum())
    return placed["fixed_ms"] + dla_ms + placed["switches"] * b["transition_us"] / 1e3


def dla_predictor_sha256(profile: HardwareProfile) -> str:
    """What a DLA prediction reads: the GPU model's inputs and the `dla` block's factors."""
    assert profile.dla is not None
    return sha256_json(
        {
            "gpu": profile.predictor_sha256(),
            "dla": profile.dla.model_dump(mode="json", exclude={"source"}),
        }
    )
