"""Students derived from the teacher: transformers keep evenly spaced layers, CNNs keep a share of
each layer's channels (by weight magnitude); both start from the teacher's weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from kdc.config import StudentConfig
from kdc.errors import UserError
from kdc.models.base import ModelAdapter


def evenly_spaced(n_teacher: int, n_student: int) -> list[int]:
    """`n_student` layer indices spread over `n_teacher`, always keeping the last layer."""
    if not 1 <= n_student <= n_teacher:
        raise UserError(f"cannot keep {n_student} of {n_teacher} layers", field="student.layers",
                        fix=f"use a number from 1 to {n_teacher}")
    step = n_teacher / n_student
    return sorted({min(n_teacher - 1, int(round((i + 1) * step)) - 1) for i in range(n_student)})


def fixed_student_spec(teacher: ModelAdapter, cfg: StudentConfig) -> dict[str, Any]:
    """The skeleton's rule, overridable by `student.layers` / `student.width`."""
    if teacher.family == "transformer":
        n = teacher.architecture()["num_hidden_layers"]
        if isinstance(cfg.layers, list):
            bad = [i for i in cfg.layers if not 0 <= i < n]
            if bad or len(set(cfg.layers)) != len(cfg.layers):
                raise UserError(f"layer indices {cfg.layers} invalid for {n} layers",
                                field="student.layers", fix=f"use distinct indices 0..{n - 1}")
            keep = sorted(cfg.layers)
        else:
            keep = evenly_spaced(n, cfg.layers or max(1, n // 2))
        return {"family": "transformer", "layers": keep}
    return {"family": "cnn", "width": cfg.width}


def derive_student(teacher: ModelAdapter, spec: dict[str, Any], example: dict[str, np.ndarray],
                   divisor: int = 8) -> ModelAdapter:
    """Build the student of `spec` from the teacher's weights."""
    if spec["family"] == "transformer":
        return teacher.select_layers(spec["layers"])
    if spec.get("width", 1.0) >= 1.0:
        import copy

        return type(teacher)(copy.deepcopy(teacher.module), teacher.source)
    return teacher.shrink(spec["width"], divisor, example)
