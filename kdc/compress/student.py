"""Students derived from the teacher, always starting from its weights: transformers keep chosen
layers and optionally slice hidden size, heads and FFN; CNNs keep a share of each conv's channels
(uniform `width`, or per-conv counts and dropped blocks from the search space)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from kdc.config import StudentConfig
from kdc.errors import UserError
from kdc.models.base import ModelAdapter


def evenly_spaced(n_teacher: int, n_student: int) -> list[int]:
    """`n_student` layer indices spread over `n_teacher`, always keeping the last layer."""
    if not 1 <= n_student <= n_teacher:
        raise UserError(
            f"cannot keep {n_student} of {n_teacher} layers",
            field="student.layers",
            fix=f"use a number from 1 to {n_teacher}",
        )
    step = n_teacher / n_student
    return sorted({min(n_teacher - 1, int(round((i + 1) * step)) - 1) for i in range(n_student)})


def kept_layers(n: int, layers: int | list[int] | None) -> list[int]:
    """The teacher layers (of `n`) a fixed student keeps for `student.layers`: its indices, or
    that many evenly spaced (default half); a UserError naming the field when out of range."""
    if isinstance(layers, list):
        bad = [i for i in layers if not 0 <= i < n]
        if bad or not layers or len(set(layers)) != len(layers):
            raise UserError(
                f"layer indices {layers} invalid for {n} layers",
                field="student.layers",
                fix=f"use distinct indices 0..{n - 1}",
            )
        return sorted(layers)
    return evenly_spaced(n, max(1, n // 2) if layers is None else layers)


def fixed_student_spec(teacher: ModelAdapter, cfg: StudentConfig) -> dict[str, Any]:
    """The skeleton's rule, overridable by `student.layers` / `student.width`."""
    if teacher.family == "transformer":
        n = teacher.architecture()["num_hidden_layers"]
        return {"family": "transformer", "layers": kept_layers(n, cfg.layers)}
    return {"family": "cnn", "width": cfg.width}


def _transformer(
    teacher: ModelAdapter, spec: dict[str, Any], example: dict[str, np.ndarray], divisor: int
) -> ModelAdapter:
    if any(k in spec for k in SIZE_KEYS):
        return teacher.sliced(spec)
    return teacher.select_layers(spec["layers"])


def _cnn(
    teacher: ModelAdapter, spec: dict[str, Any], example: dict[str, np.ndarray], divisor: int
) -> ModelAdapter:
    if "channels" in spec or "drop" in spec:
        return teacher.sliced(spec, example)
    if spec.get("width", 1.0) >= 1.0:
        return type(teacher)(copy.deepcopy(teacher.module), teacher.source)
    return teacher.shrink(spec["width"], divisor, example)


SIZE_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size")
DERIVE = {"transformer": _transformer, "cnn": _cnn}


def derive_student(
    teacher: ModelAdapter, spec: dict[str, Any], example: dict[str, np.ndarray], divisor: int = 8
) -> ModelAdapter:
    """Build the student of `spec` from the teacher's weights. Transformer specs keep `layers`
    and, with size keys, slice hidden/heads/FFN (`TransformerAdapter.sliced`); CNN specs give a
    uniform `width`, or per-conv `channels` and `drop`ped blocks (`VisionAdapter.sliced`)."""
    if spec.get("family") not in DERIVE:
        raise UserError(
            f"unknown student family {spec.get('family')!r}",
            field="search",
            fix="run the search stage again",
        )
    return DERIVE[spec["family"]](teacher, spec, example, divisor)


def random_init(student: ModelAdapter, seed: int) -> ModelAdapter:
    """Re-initialise every layer of `student` in place (PyTorch defaults) under `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in student.module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return student
