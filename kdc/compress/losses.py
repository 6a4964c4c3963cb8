"""Distillation losses, registered by name. Each takes a `LossInputs` and returns a scalar."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class LossInputs:
    """What a loss may use: logits, targets, teacher logits, and tapped features by name."""

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    labels: torch.Tensor | None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)


LossFn = Callable[..., torch.Tensor]
LOSSES: dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn

    return deco


@register("logits")
def logit_kd(x: LossInputs, temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton KD: α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(x.student_logits / t, -1), F.log_softmax(x.teacher_logits / t, -1),
                  reduction="batchmean", log_target=True) * t * t
    if x.labels is None or alpha >= 1:
        return kl
    return alpha * kl + (1 - alpha) * F.cross_entropy(x.student_logits, x.labels)


@register("ce")
def cross_entropy(x: LossInputs) -> torch.Tensor:
    """Task loss alone (fine-tuning without a teacher)."""
    return F.cross_entropy(x.student_logits, x.labels)
