"""Distill stage: train the chosen student from the teacher (cached logits, or a teacher run per
batch where augmentation or feature losses need one anyway), pruning it gradually and training it
quantization-aware when asked; save it with its spec.

A CNN student's BatchNorm statistics are re-estimated on training rows after each epoch, kept
where validation does not drop (`compress.precise_bn`; metrics `precise_bn`).

Outputs: distill/student/ (weights + shapes; reloads with `load_student`), history.jsonl,
student.json, and with `quantize.method: qat` of an INT8 run (`preflight.int8_qat`)
distill/student_qat.onnx (a QDQ model of standard ops) and qat_history.jsonl. A restarted
stage with unchanged inputs continues from distill/checkpoint/last.pt.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdc.allocator import tune_for_training
from kdc.compress.checkpoint import Checkpoint
from kdc.compress.distill import (
    DistillData,
    DistillResult,
    Steps,
    distill,
    teacher_runs_each_step,
)
from kdc.compress.evaluate import selection_metric, validation_uses_teacher
from kdc.compress.precise_bn import ROWS
from kdc.compress.prune import GradualPruning, ratio_for_latency
from kdc.diskspace import distill_bytes_needed, require_free
from kdc.models.base import ModelAdapter
from kdc.models.hf import set_attention_dropout
from kdc.pipeline import EXAMPLE_ROWS, Context, StageOutput
from kdc.preflight import int8_qat, qat_reduce_range
from kdc.progress import Advance
from kdc.rundir import (
    atomic_dir,
    atomic_path,
    read_json,
    sha256_json,
    write_json,
    write_jsonl,
)
from kdc.stages.search import build_student, latency_precision
from kdc.upstream_reads import QAT_GRAPH


def teacher_logits(ctx: Context) -> np.ndarray:
    """Teacher logits on the training inputs, computed once and cached in the run directory,
    keyed by the teacher (its files and section), the data section and the seed of the split
    that picks the training rows (a retrained teacher, new data or other rows of as many never
    reuse stale logits)."""
    key = sha256_json(
        {
            "inputs": ctx.inputs_hash,
            "data": ctx.cfg.data.model_dump(mode="json"),
            "teacher": ctx.cfg.teacher.model_dump(mode="json"),
            "split_seed": ctx.cfg.split_seed(),
        }
    )[:16]
    path = ctx.run / "distill" / f"teacher_logits-{key}.npy"
    n = len(ctx.dataset.train)
    if path.is_file():
        cached = np.load(path)
        if len(cached) == n:
            return cached
    for old in path.parent.glob("teacher_logits*.npy"):
        old.unlink()
    x = ctx.encode("train")
    with ctx.progress("teacher on the training rows", n) as advance:
        logits = ctx.teacher.forward_numpy(x, progress=advance)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, logits)
    return logits


def validation_split(n: int, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) carved from the training split for model selection."""
    order = np.random.default_rng(seed + 1).permutation(n)
    n_val = min(max(int(n * fraction), min(32, n // 2)), n // 2)
    return order[n_val:], order[:n_val]


def distill_data(ctx: Context, family: str) -> DistillData:
    """Training and validation rows for a student of `family`, with the teacher's logits where
    training uses them: on the training rows only if it does not run the teacher on every batch
    anyway, on the validation rows only if the validation score compares with the teacher."""
    x, y = ctx.encode("train"), ctx.dataset.train.labels
    tr, va = validation_split(len(next(iter(x.values()))), ctx.cfg.seed)
    train, val = {k: v[tr] for k, v in x.items()}, {k: v[va] for k, v in x.items()}
    t = None
    if not teacher_runs_each_step(ctx.cfg.distill, family, ctx.cfg.task, train):
        t = teacher_logits(ctx)
    else:  # an earlier config's cache would only take space
        for old in (ctx.run / "distill").glob("teacher_logits*.npy"):
            old.unlink()
    val_t = None
    if validation_uses_teacher(ctx.cfg.task):
        val_t = t[va] if t is not None else ctx.teacher.forward_numpy(val)
    return DistillData(
        train,
        y[tr] if len(y) else y,
        val,
        y[va] if len(y) else y,
        None if t is None else t[tr],
        val_t,
        ctx.cfg.task,
    )


def predicted_latency(ctx: Context) -> Callable[[ModelAdapter], float]:
    """Predicted p50 latency (ms) of a model on the target, from its exported ONNX graph."""
    from kdc.deploy.estimate import predict_onnx
    from kdc.export.onnx_export import export_onnx
    from kdc.stages.export import output_name

    example = ctx.encode("train", EXAMPLE_ROWS)
    precision = latency_precision(ctx)

    def latency_ms(adapter: ModelAdapter) -> float:
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(
                adapter,
                example,
                Path(d) / "model.onnx",
                opset=ctx.cfg.export.opset,
                output_name=output_name(ctx.cfg.task),
                simplify=False,
                cls_only=ctx.cfg.export.cls_only_last_layer,
            )
            pred = predict_onnx(
                path,
                ctx.profile,
                precision=precision,
                batch=ctx.cfg.verify.batch,
                padding=ctx.latency_padding(),
                dla_core=ctx.dla_core,
            )
            return float(pred["p50_ms"])

    return latency_ms


def pruning_for(
    ctx: Context, student: ModelAdapter, data: DistillData
) -> tuple[GradualPruning | None, dict]:
    """The gradual pruning schedule (ratio given, or found for `prune.target_latency_ms`)."""
    cfg = ctx.cfg.prune
    if not cfg.enabled:
        return None, {}
    example = {k: v[:EXAMPLE_ROWS] for k, v in data.train.items()}
    round_to = cfg.round_to or ctx.profile.defaults.channel_divisor
    info: dict = {
        "method": "torch-pruning",
        "importance": cfg.importance,
        "steps": cfg.steps,
        "round_to": round_to,
        "params_before": student.params(),
    }
    ratio = cfg.ratio
    if cfg.target_latency_ms is not None:
        ratio, ms = ratio_for_latency(
            student,
            example,
            cfg,
            target_ms=cfg.target_latency_ms,
            latency_ms=predicted_latency(ctx),
            round_to=round_to,
        )
        info.update(
            target_latency_ms=cfg.target_latency_ms,
            predicted_latency_ms=ms,
            target_met=ms <= cfg.target_latency_ms,
        )
        ctx.log(
            f"  pruning ratio {ratio:g} for {cfg.target_latency_ms} ms "
            f"(predicted {ms:.3g} ms on {ctx.profile.name})"
        )
    info["ratio"] = ratio
    return GradualPruning(student, example, cfg, ratio=ratio, round_to=round_to), info


def _pruned(ctx: Context, info: dict, params_after: int) -> None:
    """Record and say what pruning removed; warn where rounding channels to `round_to` took far
    more than `ratio` would (ratio r of channels in and out removes about 1-(1-r)² of weights)."""
    before, ratio = info["params_before"], info["ratio"]
    removed = 1 - params_after / before if before else 0.0
    info.update(params_after=params_after, params_removed=round(removed, 4))
    ctx.log(f"  pruned {before:,} → {params_after:,} parameters ({removed:.0%} removed)")
    expected = 1 - (1 - ratio) ** 2
    if removed > expected + 0.1:
        ctx.warn(
            f"pruning removed {removed:.0%} of the parameters, where prune.ratio {ratio:g} "
            f"would remove about {expected:.0%}: channels are rounded to multiples of "
            f"{info['round_to']} (the target's channel divisor); set prune.round_to lower "
            "(1: exact ratio) for narrow layers"
        )


def checkpoint_key(ctx: Context) -> str:
    """The input hash the pipeline recorded for this stage (its config, teacher, upstream)."""
    rec = ctx.run.stage("distill") or {}
    return rec.get("input_hash") or sha256_json(ctx.cfg.fingerprint())


def quantization_aware(
    ctx: Context, student: ModelAdapter, data: DistillData
) -> tuple[list[Path], dict]:
    """Fake-quantize the distilled student, train it `quantize.qat_epochs` more with the same
    losses, and export its QDQ ONNX to distill/student_qat.onnx (its epochs: qat_history.jsonl).
    Its weights are 7-bit where `qat_reduce_range` (x86 int8 kernels without VNNI run it)."""
    import onnx

    from kdc.compress.fold_bn import unfolded_batchnorms
    from kdc.compress.qat import export_qat, quantize_for_training
    from kdc.export.parity import shown
    from kdc.stages.build import for_tensorrt, symmetric_activations
    from kdc.stages.export import PARITY_ROWS, onnx_parity, output_name

    q, d = ctx.cfg.quantize, ctx.cfg.distill
    sym, trt = symmetric_activations(ctx), for_tensorrt(ctx)
    calib = {k: v[: q.calibration_size] for k, v in data.train.items()}
    qstudent = quantize_for_training(
        student,
        calib,
        symmetric_activations=sym,
        tensorrt=trt,
        reduce_range=qat_reduce_range(ctx.cfg, ctx.profile),
    )
    # fake quantization trains in fp32: bfloat16 autocast would round what its quantizers see
    qcfg = d.model_copy(
        update={
            "epochs": q.qat_epochs,
            "lr": q.qat_lr or d.lr / 10,
            "max_steps": None,
            "precision": "fp32",
        }
    )
    with ctx.progress("quantization-aware training", None) as advance:
        res = distill(
            qstudent,
            data,
            qcfg,
            ctx.cfg.seed,
            teacher=ctx.teacher,
            progress=lambda e, n, rec: advance(0, epoch=f"{e}/{n}", val_acc=rec["val_accuracy"]),
            on_step=_steps(advance),
        )
    path = export_qat(
        qstudent,
        {k: v[:EXAMPLE_ROWS] for k, v in data.train.items()},
        ctx.run / "distill" / QAT_GRAPH,
        opset=ctx.cfg.export.opset,
        cls_only=ctx.cfg.export.cls_only_last_layer,
        output_name=output_name(ctx.cfg.task),
        tensorrt=trt,
    )
    unfolded = unfolded_batchnorms(onnx.load(str(path))) if student.family == "cnn" else []
    if unfolded:
        ctx.warn(
            f"{len(unfolded)} BatchNorm layer(s) not folded into the conv before them "
            f"({', '.join(unfolded[:3])}): ONNX Runtime runs those convs in float. kdc folds "
            "where torch.fx traces the student and a BatchNorm alone reads a conv's output"
        )
    # a record, not a gate: an input a step from a rounding boundary may round the other way
    # in ONNX Runtime, and INT8 engines are judged by their accuracy
    parity, _ = onnx_parity(
        qstudent, path, {k: v[:PARITY_ROWS] for k, v in data.val.items()}, ctx.cfg.export
    )
    parity = {k: parity[k] for k in ("n", "max_abs", "p99_abs", "cosine", "argmax_agreement")}
    ctx.log(
        f"  QAT val accuracy {res.kept_metric:.4f} → {path.name} (against the fake-quantized "
        f"PyTorch model: max|Δ| {shown(parity['max_abs'], '.3g')}, argmax agreement "
        f"{parity['argmax_agreement']:.4f} on {parity['n']} validation rows)"
    )
    _log_teacher_rows(ctx, res.teacher_rows)
    hist = write_jsonl(ctx.run / "distill" / "qat_history.jsonl", res.history)
    return [path, hist], {
        "qat_val_accuracy": res.kept_metric,
        "qat_val_engine": val_engine(quantized=True),
        "qat_export_parity": parity,
        "qat_epochs_run": len(res.history),
        "qat_teacher_rows": res.teacher_rows,
        "qat_precise_bn": res.precise_bn,  # None where every BatchNorm was folded
    }


def _steps(advance: Advance) -> Steps:
    """Training steps (done, in all) as a bar's progress: an epoch of many rows is not one
    silent tick, and a run continued from a checkpoint counts from its step."""
    shown = 0

    def step(done: int, total: int) -> None:
        nonlocal shown
        advance(done - shown, total=total)
        shown = done

    return step


def _log_teacher_rows(ctx: Context, rows: dict | None) -> None:
    """How often training ran the teacher and how often it looked its outputs up."""
    if rows:
        ctx.log(
            f"  teacher ran on {rows['rows_run']} rows, looked up {rows['rows_looked_up']} "
            f"({rows['rows_kept']} rows kept, {rows['kept_mb']} MB)"
        )


def save_student(student: ModelAdapter, directory: Path) -> list[Path]:
    """Save `student` as the whole of `directory`: nothing an earlier model saved there (another
    family's tokenizer or config) stays beside it. Returns the files."""
    with atomic_dir(directory) as tmp:
        written = student.save(tmp)
    return [directory / p.relative_to(tmp) for p in written]


def run(ctx: Context) -> StageOutput:
    tune_for_training()  # every step's freed buffers stay mapped: no page faults to get them back
    spec = read_json(ctx.run / "search" / "student.json")["spec"]
    student = build_student(ctx, spec)
    p_attn = ctx.cfg.distill.attention_dropout
    if p_attn is not None:
        n = set_attention_dropout(student.module, p_attn)
        if n:
            ctx.log(f"  attention dropout {p_attn:g} in {n} attention modules")
        else:
            ctx.warn(
                "distill.attention_dropout not applied: no attention module of a known kind "
                f"(Hugging Face, timm) in the {student.family} student"
            )
    out = ctx.run / "distill"
    require_free(out, distill_bytes_needed(student.params()), "distillation")
    data = distill_data(ctx, student.family)
    pruning, prune_info = pruning_for(ctx, student, data)
    cfg = ctx.cfg.distill
    ckpt = Checkpoint(out / "checkpoint", checkpoint_key(ctx)) if (cfg.checkpoint) else None
    with ctx.progress("distilling", None) as advance:
        result = distill(
            student,
            data,
            cfg,
            ctx.cfg.seed,
            teacher=ctx.teacher,
            pruning=pruning,
            checkpoint=ckpt,
            progress=lambda e, n, rec: advance(
                0, epoch=f"{e}/{n}", loss=rec["loss"] or 0.0, val_acc=rec["val_accuracy"]
            ),
            on_step=_steps(advance),
        )
    if result.resumed_from_epoch is not None:
        ctx.log(f"  continued from the checkpoint after epoch {result.resumed_from_epoch}")
    _log_teacher_rows(ctx, result.teacher_rows)
    files = save_student(student, ctx.run / "distill" / "student")
    hist = write_jsonl(ctx.run / "distill" / "history.jsonl", result.history)
    if prune_info:
        _pruned(ctx, prune_info, student.params())
    spec_file = write_json(
        ctx.run / "distill" / "student.json",
        {
            "spec": spec,
            "architecture": student.architecture(),
            "losses": result.losses,
            "pruning": prune_info or None,
        },
    )
    qat = int8_qat(ctx.cfg)  # none for FP32 or FP16 engines (warned when the run started)
    qat_files, qat_metrics = quantization_aware(ctx, student, data) if qat else ([], {})
    if not qat_files:  # an earlier QAT run's graph is not this student's
        for name in (QAT_GRAPH, "qat_history.jsonl"):
            (ctx.run / "distill" / name).unlink(missing_ok=True)
    if ckpt is not None:
        ckpt.clear()
    metric = selection_metric(data.task).replace("_", " ")
    kept = ctx.cfg.distill.select
    if result.kept_epoch >= 0:  # one-based for people; kept_epoch stays the history's index
        which = f"the {kept} epoch ({result.kept_epoch + 1} of {len(result.history)})"
    else:
        why = "distill.epochs is 0" if not result.history else "no epoch beat it"
        which = f"the untrained student ({why})"
    n_val = len(next(iter(data.val.values()), []))
    held = f"{n_val} of {n_val + len(data)} training rows held out"
    ctx.log(f"  kept {which}: val {metric} {result.kept_metric:.4f} ({held} for it)")
    _log_precise_bn(ctx, result.precise_bn, metric)
    return StageOutput(
        [*files, hist, spec_file, *qat_files],
        {
            **_metrics(result, student, data, prune_info, qat_metrics),
            "select": kept,
            "train_precision": cfg.precision,  # the forward passes' autocast (QAT's: fp32)
        },
        earlier_s=result.earlier_s,
    )


def _log_precise_bn(ctx: Context, record: dict | None, metric: str) -> None:
    """Whether the kept student's BatchNorm statistics were re-estimated, and its score so."""
    if record:
        done = "re-estimated" if record["applied"] else "re-estimated and restored"
        ctx.log(
            f"  BatchNorm statistics {done} on up to {ROWS} training rows: val {metric} "
            f"{record['val_before']:.4f} → {record['val_after']:.4f}"
        )


def val_engine(quantized: bool = False) -> str:
    """What scored the validation split (`val_accuracy`, `precise_bn`'s, `qat_val_accuracy`):
    the PyTorch student where it trains, with fake quantization under QAT."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"pytorch-{device}-{'fake-quant' if quantized else 'fp32'}"


def _metrics(
    result: DistillResult, student: ModelAdapter, data: DistillData, prune_info: dict, qat: dict
) -> dict:
    return {
        "val_accuracy": result.kept_metric,
        "val_metric": selection_metric(data.task),
        "val_engine": val_engine(),  # REPORT.md: every accuracy figure names its engine
        "kept_epoch": result.kept_epoch,
        "epochs_run": len(result.history),
        "student_params": student.params(),
        "train_rows": len(data),
        "val_rows": len(next(iter(data.val.values()))),
        "losses": [s["name"] for s in result.losses],
        "pruning": prune_info or None,
        "resumed_from_epoch": result.resumed_from_epoch,
        "teacher_rows": result.teacher_rows,
        "precise_bn": result.precise_bn,
        **qat,
    }
