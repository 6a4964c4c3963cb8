"""Distill stage: train the chosen student from cached teacher logits; save it with its spec."""

from __future__ import annotations

import numpy as np

from kdc.compress.distill import distill
from kdc.pipeline import Context, StageOutput
from kdc.rundir import atomic_path, read_json, write_json, write_jsonl
from kdc.stages.search import build_student


def teacher_logits(ctx: Context) -> np.ndarray:
    """Teacher logits on the training inputs, computed once and cached in the run directory."""
    path = ctx.run / "distill" / "teacher_logits.npy"
    n = len(ctx.dataset.train)
    if path.is_file():
        cached = np.load(path)
        if len(cached) == n:
            return cached
    logits = ctx.teacher.forward_numpy(ctx.encode("train"))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, logits)
    return logits


def validation_split(n: int, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) carved from the training split for model selection."""
    order = np.random.default_rng(seed + 1).permutation(n)
    n_val = min(max(int(n * fraction), min(32, n // 2)), n // 2)
    return order[n_val:], order[:n_val]


def run(ctx: Context) -> StageOutput:
    spec = read_json(ctx.run / "search" / "student.json")["spec"]
    student = build_student(ctx, spec)
    t_logits = teacher_logits(ctx)
    x, y = ctx.encode("train"), ctx.dataset.train.labels
    tr, va = validation_split(len(y), ctx.cfg.seed)
    pick = lambda d, ix: {k: v[ix] for k, v in d.items()}  # noqa: E731
    cfg = ctx.cfg.distill
    with ctx.progress("distilling", cfg.epochs) as advance:
        result = distill(t_logits[tr], student, pick(x, tr), y[tr], pick(x, va), y[va], cfg,
                         ctx.cfg.seed, progress=lambda e, n, rec: advance(
                             loss=rec["loss"] or 0.0, val_acc=rec["val_accuracy"]))
    out_dir = ctx.run / "distill" / "student"
    files = student.save(out_dir)
    hist = write_jsonl(ctx.run / "distill" / "history.jsonl", result.history)
    spec_file = write_json(ctx.run / "distill" / "student.json",
                           {"spec": spec, "architecture": student.architecture()})
    ctx.log(f"  best val accuracy {result.best_metric:.4f} (epoch {result.best_epoch})")
    return StageOutput([*files, hist, spec_file],
                       {"val_accuracy": result.best_metric, "best_epoch": result.best_epoch,
                        "epochs_run": len(result.history), "student_params": student.params(),
                        "train_rows": int(len(tr)), "val_rows": int(len(va))})
