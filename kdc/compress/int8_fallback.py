"""Accuracy-aware INT8: when the INT8 graph strays from the FP32 graph by more than a budget on
held-out training rows, keep the most sensitive layers in float. A layer's sensitivity is the
loss of the graph quantized with only that layer left in float; layers are then kept in float,
most helpful first, until the loss fits the budget (or `max_layers` are kept)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

# A node's layer: the path up to its block index (`layer.3`, `layers.3`, `blocks.3`, `features.3`,
# `layer1.0`), else the path up to its last component.
_LAYER = re.compile(r"^(.*?(?:layers?|blocks?|features|stages?)\d*[./_]\d+)")


def layer_of(node_name: str) -> str:
    """The layer a node of an exported graph belongs to, from its name."""
    m = _LAYER.match(node_name)
    if m:
        return m.group(1)
    head, _, _ = node_name.rpartition("/")
    return head or node_name


def layer_groups(path: Path | str, op_types: list[str] | None) -> dict[str, list[str]]:
    """Names of the nodes INT8 would quantize (`op_types`; None: MatMul/Gemm/Conv/Gather),
    grouped by layer, in graph order."""
    ops = set(op_types or ("MatMul", "Gemm", "Conv", "Gather"))
    model = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] not in weights:
            continue  # a Gather of a shape or of activations: nothing to quantize
        if node.op_type in ops and node.name:
            groups.setdefault(layer_of(node.name), []).append(node.name)
    return groups


def output_loss(task: str, ref: np.ndarray, out: np.ndarray) -> float:
    """How far INT8 outputs are from the FP32 ones: 1 − mean cosine for embeddings, the share of
    rows whose predicted class changes otherwise."""
    if task == "sentence-embedding":
        num = (ref * out).sum(axis=1)
        den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1) + 1e-12
        return float(1.0 - np.mean(num / den))
    return float(np.mean(ref.argmax(axis=1) != out.argmax(axis=1)))


def output_deviation(ref: np.ndarray, out: np.ndarray) -> float:
    """RMS of the INT8 outputs' difference from the FP32 ones over the RMS of the FP32 ones: finer
    than `output_loss`, it separates graphs that change the class of equally many rows."""
    ref64 = ref.astype(np.float64)
    rms = np.sqrt(np.mean(ref64**2)) + 1e-12
    return float(np.sqrt(np.mean((out.astype(np.float64) - ref64) ** 2)) / rms)


def keep_sensitive_layers(
    full: Path,
    full_loss: float,
    quantize: Callable[[list[str], Path], Path],
    loss_of: Callable[[Path], float],
    groups: dict[str, list[str]],
    budget: float,
    scratch: Path,
    max_layers: int,
) -> tuple[Path, dict]:
    """Start from `full`, the graph with everything quantized, and its loss; if that exceeds
    `budget`, rank layers by the loss with that layer alone in float and keep layers in float
    greedily until it fits. Returns the chosen graph and a record of every measured loss."""
    best, loss = full, full_loss
    record: dict = {"budget": budget, "int8_loss": round(loss, 5), "kept_float": []}
    if loss <= budget or not groups:
        record["final_loss"] = record["int8_loss"]
        return best, record
    sensitivity = {
        g: loss_of(quantize(nodes, scratch / f"without-{i}.onnx"))
        for i, (g, nodes) in enumerate(groups.items())
    }
    order = sorted(sensitivity, key=sensitivity.get)
    kept: list[str] = []
    for g in order[:max_layers]:
        kept.append(g)
        path = quantize([n for k in kept for n in groups[k]], scratch / f"keep-{len(kept)}.onnx")
        loss = loss_of(path)
        best = path
        if loss <= budget:
            break
    record.update(
        sensitivity={g: round(v, 5) for g, v in sensitivity.items()},
        kept_float=kept,
        final_loss=round(loss, 5),
        met=loss <= budget,
    )
    return best, record
