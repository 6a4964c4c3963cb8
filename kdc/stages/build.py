"""Build stage: ONNX Runtime engines (FP32 optimised, INT8 QDQ) always; TensorRT where it is
installed, else a bundle that builds it on the device."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from kdc.diskspace import engine_bytes_needed, require_free
from kdc.pipeline import Context, StageOutput
from kdc.rundir import atomic_path, read_json, write_json


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 4)


def _calibration(ctx: Context, rows: int, batch: int = 16) -> list[dict[str, np.ndarray]]:
    x = ctx.encode("train")
    n = min(rows, len(next(iter(x.values()))))
    return [{k: v[s : s + batch] for k, v in x.items()} for s in range(0, n, batch)]


def symmetric_activations(ctx: Context) -> bool:
    """S8S8 (symmetric) for TensorRT targets; asymmetric U8S8 is more accurate on CPUs."""
    q = ctx.cfg.quantize.symmetric_activations
    return q if q is not None else "tensorrt" in ctx.profile.runtime.engines


# Ops quantized per family. Transformers leave Add/Softmax/LayerNorm in float: quantizing the
# attention-mask Add (range down to float min) collapses the model to chance.
QUANT_OPS: dict[str, list[str] | None] = {"transformer": ["MatMul", "Gemm", "Gather"], "cnn": None}


def build_onnxruntime(ctx: Context, src: Path) -> list[dict]:
    from kdc.deploy.onnxruntime import optimize, quantize_int8

    out_dir = ctx.run / "build" / "onnxruntime"
    arch = read_json(ctx.run / "distill" / "student.json")["architecture"]  # pruning changes it
    fam = ctx.teacher.family
    fp32 = optimize(
        src,
        out_dir / "model_fp32.onnx",
        family=fam,
        num_heads=arch.get("num_attention_heads") or 0,
        hidden_size=arch.get("hidden_size") or 0,
    )
    engines = [
        {
            "engine": "onnxruntime",
            "provider": "CPUExecutionProvider",
            "precision": "fp32",
            "path": str(fp32.relative_to(ctx.run.root)),
            "size_mb": _size_mb(fp32),
            "status": "built",
            "optimization": "ORT_ENABLE_ALL + transformer fusion"
            if fam == "transformer"
            else "ORT_ENABLE_EXTENDED (offline)",
        }
    ]
    q = ctx.cfg.quantize
    if q.precision != "int8":
        return engines
    dst = out_dir / "model_int8.onnx"
    qat = ctx.run / "distill" / "student_qat.onnx"
    if q.method == "qat" and qat.is_file():
        with atomic_path(dst) as tmp:
            shutil.copyfile(qat, tmp)
        how = {
            "method": "nncf-qat",
            "epochs": q.qat_epochs,
            "activations": "int8 symmetric (overflow fix disabled)",
        }
    else:
        sym = symmetric_activations(ctx)
        quantize_int8(
            src,
            dst,
            _calibration(ctx, q.calibration_size),
            symmetric_activations=sym,
            method=q.calibration,
            op_types=QUANT_OPS.get(fam),
        )
        how = {
            "method": "ort-static-qdq",
            "calibration": q.calibration,
            "calibration_rows": q.calibration_size,
            "activations": "int8 symmetric" if sym else "uint8 asymmetric",
            "weights": "int8 per-channel",
            "ops": QUANT_OPS.get(fam) or "onnxruntime default",
        }
    engines.append(
        {
            "engine": "onnxruntime",
            "provider": "CPUExecutionProvider",
            "precision": "int8",
            "path": str(dst.relative_to(ctx.run.root)),
            "size_mb": _size_mb(dst),
            "status": "built",
            "quantization": how,
        }
    )
    return engines


def build_tensorrt(ctx: Context, engines: list[dict]) -> dict:
    """A native TensorRT engine, or a device bundle (remote targets), or `unavailable`."""
    from kdc.deploy import tensorrt

    shipped = next(e for e in reversed(engines) if e["status"] == "built")
    onnx_path = ctx.run / shipped["path"]
    precision = shipped["precision"] if shipped["precision"] != "fp32" else "fp16"
    rec = {"engine": "tensorrt", "precision": precision, "source": shipped["path"]}
    try:
        opts = tensorrt.options_for_profile(
            ctx.profile,
            precision,
            input_shapes(ctx),
            cache_dir=ctx.run / "build" / "tensorrt" / "cache",
        )
        plan = ctx.run / "build" / "tensorrt" / "model.plan"
        built = tensorrt.build_engine(onnx_path, plan, ctx.profile, opts)
        return {**rec, **built, "path": str(plan.relative_to(ctx.run.root))}
    except tensorrt.TensorRTUnavailable as e:
        reason = str(e)
    if ctx.profile.measurable:
        return {**rec, "status": "unavailable", "reason": reason}
    bundle = make_bundle(ctx, onnx_path, precision)
    return {
        **rec,
        "status": "bundle",
        "path": str(bundle.relative_to(ctx.run.root)),
        "reason": reason,
    }


def input_shapes(ctx: Context) -> dict[str, list[int]]:
    x = ctx.encode("eval")
    return {k: [ctx.cfg.verify.batch, *v.shape[1:]] for k, v in x.items()}


def make_bundle(ctx: Context, onnx_path: Path, precision: str) -> Path:
    from kdc.deploy.bundle import write_bundle
    from kdc.deploy.onnxruntime import make_session, run_session

    goldens = {k: v[:8] for k, v in ctx.encode("eval").items()}
    outputs = run_session(make_session(onnx_path), goldens)
    return write_bundle(
        ctx.run / "build" / "bundle",
        onnx_path,
        ctx.profile,
        precision=precision,
        input_shapes=input_shapes(ctx),
        golden_inputs=goldens,
        golden_outputs=outputs,
    )


def run(ctx: Context) -> StageOutput:
    src = ctx.run / "export" / "model.onnx"
    require_free(ctx.run / "build", engine_bytes_needed(src), "building engines")
    engines: list[dict] = []
    if "onnxruntime" in ctx.cfg.build.engines:
        engines += build_onnxruntime(ctx, src)
    if "tensorrt" in ctx.cfg.build.engines and "tensorrt" in ctx.profile.runtime.engines:
        engines.append(build_tensorrt(ctx, engines))
    out = write_json(ctx.run / "build" / "engines.json", engines)
    files = [
        ctx.run / e["path"] for e in engines if e.get("path") and (ctx.run / e["path"]).is_file()
    ]
    for e in engines:
        ctx.log(
            f"  {e['engine']} {e['precision']}: {e['status']}"
            + (f" ({e['size_mb']} MB)" if "size_mb" in e else "")
        )
    return StageOutput([*files, out], {"engines": len(engines)})
