"""Train a student from a teacher with the configured losses; keep the best epoch on a validation split carved from train (never the eval split)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from kdc.compress.losses import LOSSES, LossInputs
from kdc.config import DistillConfig
from kdc.errors import UserError
from kdc.models.base import ModelAdapter

Progress = Callable[[int, int, dict], None]


@dataclass
class DistillResult:
    history: list[dict]
    best_epoch: int
    best_metric: float


def _batches(inputs: dict[str, np.ndarray], idx: np.ndarray, bs: int):
    for s in range(0, len(idx), bs):
        sel = idx[s:s + bs]
        yield sel, {k: torch.from_numpy(v[sel]) for k, v in inputs.items()}


def evaluate_accuracy(adapter: ModelAdapter, inputs: dict[str, np.ndarray],
                      labels: np.ndarray) -> float:
    logits = adapter.forward_numpy(inputs)
    return float((logits.argmax(-1) == labels).mean())


def distill(teacher_logits: np.ndarray, student: ModelAdapter, train_inputs: dict[str, np.ndarray],
            train_labels: np.ndarray, val_inputs: dict[str, np.ndarray], val_labels: np.ndarray,
            cfg: DistillConfig, seed: int, progress: Progress | None = None) -> DistillResult:
    """Train `student` in place on cached teacher logits; restore the best epoch's weights."""
    for loss in cfg.losses:
        if loss.name not in LOSSES:
            raise UserError(f"unknown loss '{loss.name}'", field="distill.losses",
                            fix=f"use one of {', '.join(sorted(LOSSES))}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = student.module
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train_labels)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, min(cfg.epochs * steps_per_epoch, cfg.max_steps or 1 << 30))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.0, 1 - s / total))
    t_logits = torch.from_numpy(teacher_logits.astype(np.float32))
    y_all = torch.from_numpy(train_labels)
    best = (evaluate_accuracy(student, val_inputs, val_labels), -1)
    best_state = copy.deepcopy(model.state_dict())
    history, step, stale = [], 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        losses = []
        for sel, batch in _batches(train_inputs, rng.permutation(n), cfg.batch_size):
            if step >= total:
                break
            x = LossInputs(model(**batch), t_logits[sel], y_all[sel])
            loss = sum(spec.weight * LOSSES[spec.name](x, **_params(spec, cfg))
                       for spec in cfg.losses)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
        acc = evaluate_accuracy(student, val_inputs, val_labels)
        rec = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else None,
               "val_accuracy": acc, "steps": step}
        history.append(rec)
        if progress:
            progress(epoch + 1, cfg.epochs, rec)
        if acc > best[0]:
            best, best_state, stale = (acc, epoch), copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return DistillResult(history, best[1], best[0])


def _params(spec, cfg: DistillConfig) -> dict:
    """Loss parameters: the loss's own, with the section-wide T and α as defaults for `logits`."""
    base = {"temperature": cfg.temperature, "alpha": cfg.alpha} if spec.name == "logits" else {}
    return {**base, **spec.params}
