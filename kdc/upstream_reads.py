"""What a stage reads of the outputs of the stage before it, where that is not all of them (or
more): part of its input hash (`kdc.pipeline.upstream_hash`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from kdc.rundir import RunDir, sha256_json

QAT_GRAPH = "student_qat.onnx"  # distill's QAT graph, which build ships as the INT8 engine


def _chosen_student(run: RunDir) -> str:
    """Distillation reads the spec of the student search chose, not the predictions beside it
    (another target's): a search for another target that chooses the same student keeps it."""
    try:
        spec = json.loads((run / "search" / "student.json").read_text())["spec"]
    except (OSError, ValueError, TypeError, KeyError):
        return run.output_hash("search")
    return sha256_json({"search_student_spec": spec})


def _exported_and_qat(run: RunDir) -> str:
    """Build reads export's outputs and, after quantization-aware training, distill's QAT graph:
    one retrained from an unchanged float student (distill.epochs 0) leaves export's outputs as
    they were. Without one, export's outputs alone (as runs recorded before hashed them)."""
    exported = run.output_hash("export")
    outputs = (run.stage("distill") or {}).get("outputs", {})
    qat = next((d for rel, d in outputs.items() if Path(rel).name == QAT_GRAPH), None)
    return sha256_json({"export": exported, "qat": qat}) if qat else exported


# what a stage reads of the stage before it, hashed (by default: all its recorded outputs)
UPSTREAM_READS: dict[str, Callable[[RunDir], str]] = {
    "distill": _chosen_student,
    "build": _exported_and_qat,
}
