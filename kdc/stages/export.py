"""Export stage: student and teacher to ONNX, parity of each against PyTorch on eval inputs. The
student's last layer computes only [CLS] where its head reads nothing else
(`export.cls_only_last_layer`); the teacher is exported as it is. The PyTorch student's outputs
on those inputs are kept for verify (`REFERENCE`)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from kdc.config import ExportConfig
from kdc.errors import KdcError
from kdc.export.cls_only import supports_cls_only
from kdc.export.onnx_export import choose_exporter, export_onnx, opset_of
from kdc.export.parity import compare, shown
from kdc.models import load_run_student
from kdc.models.base import ModelAdapter
from kdc.pipeline import EXAMPLE_ROWS, Context, StageOutput
from kdc.rundir import atomic_path, sha256_file, write_json

PARITY_ROWS = 256
REFERENCE = "student_reference.npz"  # the PyTorch student's outputs on the parity inputs
# onnxslim rewrites a transformer's attention-mask subgraph so that ONNX Runtime's transformer
# optimizer no longer fuses Attention (measured: 3 Attention nodes -> 0 on the sentiment student);
# the build stage's optimizers fold constants themselves, so transformers are exported unslimmed.
SIMPLIFY = {"transformer": False, "cnn": True}


class ParityError(KdcError):
    """ONNX outputs differ from PyTorch beyond tolerance: exit code 1."""

    exit_code = 1


def output_name(task: str) -> str:
    """The ONNX output name: `embedding` for sentence-embedding, else `logits`."""
    return "embedding" if task == "sentence-embedding" else "logits"


def parity_inputs(ctx: Context) -> dict[str, np.ndarray]:
    """The eval rows parity is checked on (export) and engines are compared on (verify)."""
    return ctx.encode("eval", PARITY_ROWS)


def reference_key(ctx: Context, inputs: dict[str, np.ndarray]) -> str:
    """Hash of what the PyTorch student's reference outputs depend on: its weight files and the
    parity inputs."""
    h = hashlib.sha256()
    student = ctx.run / "distill" / "student"
    for f in sorted(p for p in student.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(student)}:{sha256_file(f)};".encode())
    for name in sorted(inputs):
        a = np.ascontiguousarray(inputs[name])
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def student_reference(ctx: Context, student: ModelAdapter) -> np.ndarray:
    """The PyTorch student's outputs on the parity inputs: the ones export saved
    (`REFERENCE`), if it computed them from these weights and inputs, else computed now."""
    inputs = parity_inputs(ctx)
    path = ctx.run / "export" / REFERENCE
    try:
        with np.load(path) as saved:
            if str(saved["key"]) == reference_key(ctx, inputs):
                return saved["outputs"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # absent or damaged: recompute
        pass
    return student.forward_numpy(inputs)


def parity_of(ctx: Context, adapter: ModelAdapter, path: Path) -> tuple[dict, np.ndarray]:
    """Parity of the ONNX model at `path` against `adapter` on the parity inputs, and the
    adapter's outputs there."""
    return onnx_parity(adapter, path, parity_inputs(ctx), ctx.cfg.export)


def onnx_parity(
    adapter: ModelAdapter, path: Path, inputs: dict[str, np.ndarray], tol: ExportConfig
) -> tuple[dict, np.ndarray]:
    """Parity of the ONNX model at `path` (ONNX Runtime) against `adapter` on `inputs`, judged
    by export's tolerances, and the adapter's outputs there."""
    from kdc.deploy.onnxruntime import make_session, run_session

    ref = adapter.forward_numpy(inputs)
    got = run_session(make_session(path), inputs)
    return compare(ref, got, atol=tol.atol, rtol=tol.rtol, min_cosine=tol.min_cosine), ref


def run(ctx: Context) -> StageOutput:
    student = load_run_student(ctx.run / "distill" / "student", ctx.cfg.data.max_length)
    example = ctx.encode("train", EXAMPLE_ROWS)
    opset = ctx.cfg.export.opset
    out_name = output_name(ctx.cfg.task)
    simplify = SIMPLIFY.get(ctx.teacher.family, True)
    cls_only = ctx.cfg.export.cls_only_last_layer and supports_cls_only(student)
    exporters = {}
    paths = []
    for adapter, name in ((student, "model"), (ctx.teacher, "teacher")):
        exporter, why = choose_exporter(adapter, ctx.cfg.export.exporter, out_name)
        path = export_onnx(
            adapter,
            example,
            ctx.run / "export" / f"{name}.onnx",
            opset=opset,
            output_name=out_name,
            simplify=simplify,
            exporter=exporter,
            cls_only=name == "model" and cls_only,
        )
        exporters[name] = {"exporter": exporter, "reason": why, "opset": opset_of(path)}
        paths.append(path)
    s_path, t_path = paths
    ctx.log(f"  exported with {exporters['model']['exporter']}: {exporters['model']['reason']}")
    if cls_only:
        ctx.log("  the student's last layer computes only [CLS] (all its head reads)")
    s_parity, s_ref = parity_of(ctx, student, s_path)
    parity = {"student": s_parity, "teacher": parity_of(ctx, ctx.teacher, t_path)[0]}
    out = write_json(ctx.run / "export" / "parity.json", parity)
    ref_path = ctx.run / "export" / REFERENCE
    with atomic_path(ref_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, outputs=s_ref, key=reference_key(ctx, parity_inputs(ctx)))
    for who, p in parity.items():
        ctx.log(f"  {who}: max|Δ| {shown(p['max_abs'], '.2e')}, cosine {shown(p['cosine'], '.6f')}")
        if not p["passed"]:
            raise ParityError(
                f"{who} ONNX differs from PyTorch: max_abs {shown(p['max_abs'], '.3g')} "
                f"(atol {p['atol']}), min cosine {shown(p['min_cosine'], '.5f')}; worst eval "
                f"rows {p['worst_rows']} (see {out})"
            )
    return StageOutput(
        [s_path, t_path, out, ref_path],
        {
            "parity_max_abs": parity["student"]["max_abs"],
            "parity_cosine": parity["student"]["cosine"],
            "simplified": "onnxslim" if simplify else "no (keeps attention fusable)",
            "exporter": exporters["model"]["exporter"],
            "exporter_reason": exporters["model"]["reason"],
            "opset": exporters["model"]["opset"],
            "teacher_exporter": exporters["teacher"]["exporter"],
            "last_layer": "cls-only" if cls_only else "full",
        },
    )
