"""The build stage's ONNX Runtime graph of a head-pruned student: ORT's transformer optimizer
fuses each layer's attention with that layer's own head count (its Q reshape's), and build
tells it no head count that only some layers have, nor a hidden size that is no multiple of it
(ORT asserts it is: build failed on a student whose layer 0 keeps 3 of 4 heads)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from tiny import run_onnx, tiny_bert

from kdc.deploy.onnxruntime import optimizer_dims
from kdc.export.onnx_export import export_onnx
from kdc.models.hf import HFTextAdapter
from kdc.rundir import RunDir
from kdc.stages import build

PRUNED = {  # heads removed per layer of 4 (8 dims each, hidden 32): the heads each layer keeps
    "different": ({0: [1], 1: [0, 2]}, [3, 2, 4]),  # layer 0's 3 does not divide 32
    "uniform": ({0: [0], 1: [1], 2: [2]}, [3, 3, 3]),  # as kdc's prune.head_ratio 0.25 leaves
    "layer 0 whole": ({1: [0, 1, 2]}, [4, 1, 4]),
}


def _pruned_student(
    tmp: Path, removed: dict[int, list[int]]
) -> tuple[dict, Path, dict[str, np.ndarray], np.ndarray]:
    """A random tiny BERT (3 layers of 4 heads) with `removed` heads pruned, as kdc's adapter,
    its architecture record and an exported graph with example inputs."""
    from transformers import BertForSequenceClassification

    model, tok = tiny_bert(tmp, layers=3)
    model.config.num_attention_heads = 4
    torch.manual_seed(0)
    model = BertForSequenceClassification(model.config)
    with torch.no_grad():  # logits of order 1, biases non-zero (the exporter folds zero ones)
        model.classifier.weight.mul_(100)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02)
    model.prune_heads(removed)
    adapter = HFTextAdapter(model.eval(), tok, max_length=16)
    example = adapter.encode(["good movie plot", "bad plot", "good"])
    src = export_onnx(adapter, example, tmp / "model.onnx", simplify=False)
    names = {i.name for i in onnx.load(str(src)).graph.input}
    feed = {k: v for k, v in example.items() if k in names}
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    return adapter.architecture(), src, feed, ref


def _build_fp32(tmp: Path, arch: dict, src: Path, floor: bool) -> tuple[Path, dict]:
    """build's FP32 ONNX Runtime engine of a student of `arch`, and its record."""
    (tmp / "distill").mkdir()
    (tmp / "distill" / "student.json").write_text(json.dumps({"architecture": arch}))
    ctx = SimpleNamespace(
        run=RunDir(tmp),
        teacher=SimpleNamespace(family="transformer"),
        cfg=SimpleNamespace(
            build=SimpleNamespace(softmax_floor=floor),
            quantize=SimpleNamespace(precision="fp32"),
        ),
    )
    out = tmp / "engines"
    out.mkdir()
    (engine,) = build._onnxruntime_engines(ctx, src, out)
    return out / engine["path"], engine


@pytest.mark.parametrize("case", PRUNED)
def test_each_layer_fuses_its_own_heads(tmp_path: Path, case: str) -> None:
    removed, heads = PRUNED[case]
    arch, src, feed, ref = _pruned_student(tmp_path, removed)
    assert arch.get("layer_heads", [arch["num_attention_heads"]] * 3) == heads
    fp32, _ = _build_fp32(tmp_path, arch, src, floor=False)
    graph = onnx.load(str(fp32))
    fused = [n for n in graph.graph.node if n.op_type == "Attention"]
    assert [next(a.i for a in n.attribute if a.name == "num_heads") for n in fused] == heads
    np.testing.assert_allclose(run_onnx(fp32, feed), ref, atol=1e-5)


def test_floored_attention_of_different_heads(tmp_path: Path) -> None:
    """Left unfused for the masked-softmax floor, each layer's softmax is floored."""
    arch, src, feed, ref = _pruned_student(tmp_path, PRUNED["different"][0])
    fp32, engine = _build_fp32(tmp_path, arch, src, floor=True)
    assert "Attention" not in {n.op_type for n in onnx.load(str(fp32)).graph.node}
    assert engine["optimization"].endswith("masked-softmax floor on 3 attention softmaxes")
    np.testing.assert_allclose(run_onnx(fp32, feed), ref, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "dims"),
    [
        ({"num_attention_heads": 12, "hidden_size": 768}, (12, 768)),  # as before: unpruned
        ({"num_attention_heads": 9, "hidden_size": 768, "attention_head_size": 64}, (9, 576)),
        ({"num_attention_heads": 9, "attention_head_size": 64, "layer_heads": [9, 12]}, (0, 0)),
        ({"num_attention_heads": 5, "hidden_size": 32}, (0, 0)),  # no whole head size
        ({"channels": [8, 16]}, (0, 0)),  # a CNN
    ],
)
def test_optimizer_dims(arch: dict, dims: tuple[int, int]) -> None:
    assert optimizer_dims(arch) == dims


def test_no_hidden_size_warning_for_pruned_heads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ORT's attention fusion warns, for each layer of a head-pruned student, that the width of
    the heads it was told (heads × head size) is not q/k/v's input width: true of every
    head-pruned attention, so build does not pass the warning on."""
    arch, src, _, _ = _pruned_student(tmp_path, PRUNED["uniform"][0])
    with caplog.at_level(logging.WARNING):
        _build_fp32(tmp_path, arch, src, floor=False)
    assert not [r for r in caplog.records if "is not same as weight" in r.getMessage()]
