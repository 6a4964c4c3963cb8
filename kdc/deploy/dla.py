"""Latency of a TensorRT engine built for a Jetson DLA core (`build.dla_core`), "roofline-v1+dla".

TensorRT runs each layer DLA supports on the core and the rest on the GPU (GPU_FALLBACK), with a
reformat at every switch. The model places each fused kernel by its ops (`DLA_OPS`, an
approximate table; attention's MatMul of two activations and its Softmax run on the GPU), times
DLA kernels as max(FLOPs / (DLA peak × efficiency), bytes / (bandwidth × the GPU model's memory
efficiency)) at the core's int8 or fp16 peak (DLA has no fp32) plus a per-layer overhead, GPU
kernels by the profile's roofline-v1 model, and adds `transition_us` per switch and the call
overhead. The peaks and factors are the profile's `dla` block, with their sources (fitted by
bench/fit_dla.py to published DLA timings). Every number here is a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

from kdc.deploy.kernels import MASKED, Kernel, launches
from kdc.errors import UserError
from kdc.profiles import HardwareProfile
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
            fix="drop it to build for the GPU, or target a Jetson with DLA (AGX Orin, Orin NX)",
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
    from kdc.deploy.estimate import kernel_ms, kernel_times_s

    dla, lm = profile.dla, profile.latency_model
    assert dla is not None
    on = [on_dla(k) for k in kernels]
    t = kernel_times_s(kernels, profile)  # the GPU's, then the DLA's where a kernel runs there
    bw = profile.memory.bandwidth_gbps * 1e9 * lm.memory_efficiency
    for i, k in enumerate(kernels):
        if on[i]:
            peak = (dla.int8_tops if k.precision == "int8" else dla.fp16_tflops) * 1e12
            t[:, i] = (
                k.flops / (peak * dla.compute_efficiency),
                k.bytes / bw,
                dla.layer_overhead_us * 1e-6,
            )
    switches = sum(a != b for a, b in zip(on, on[1:], strict=False))
    switch_ms = switches * dla.transition_us / 1e3
    return {
        "p50_ms": float(kernel_ms(t).sum()) + switch_ms + lm.call_overhead_us / 1e3,
        "dla_kernels": sum(on),
        "gpu_kernels": launches([k for k, d in zip(kernels, on, strict=True) if not d]),
        "transitions": switches,
        "transitions_ms": switch_ms,
        "times_s": t,
        "on_dla": on,
    }


def dla_predictor_sha256(profile: HardwareProfile) -> str:
    """What a DLA prediction reads: the GPU model's inputs and the `dla` block's factors."""
    assert profile.dla is not None
    return sha256_json(
        {
            "gpu": profile.predictor_sha256(),
            "dla": profile.dla.model_dump(mode="json", exclude={"source"}),
        }
    )
