"""Exporter choice: optimum-onnx for Hugging Face classifiers (teacher and pruned students), the
TorchScript exporter for kdc's own graphs; parity with PyTorch either way."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import onnx
import pytest
import torch
from tiny import run_onnx, tiny_text_adapter, tiny_vit

from kdc.compress.prune import prune_once
from kdc.config import PruneConfig
from kdc.deploy.onnxruntime import count_ops, optimize
from kdc.errors import UserError
from kdc.export.onnx_export import choose_exporter, export_onnx, opset_of
from kdc.models.hf_image import HFImageAdapter

TEXTS = ["good movie", "the plot was awful and bad", "i love this film", "bad"]


def test_auto_picks_optimum_for_a_hf_classifier_with_parity_and_dynamic_axes(tmp_path):
    bert = tiny_text_adapter(tmp_path)
    assert choose_exporter(bert, "auto", "logits")[0] == "optimum"
    x = bert.encode(TEXTS)
    path = export_onnx(bert, x, tmp_path / "m.onnx", simplify=False, exporter="optimum")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert opset_of(path) >= 17
    np.testing.assert_allclose(run_onnx(path, x), bert.forward_numpy(x), atol=1e-4)
    short = {k: v[:3, :8] for k, v in x.items()}  # another batch size and sequence length
    np.testing.assert_allclose(run_onnx(path, short), bert.forward_numpy(short), atol=1e-4)
    fused = optimize(path, tmp_path / "o.onnx", family="transformer", num_heads=2, hidden_size=32)
    assert count_ops(fused).get("Attention") == 2


def test_optimum_exports_a_pruned_student(tmp_path):
    bert = tiny_text_adapter(tmp_path)
    x = bert.encode(TEXTS)
    torch.set_num_threads(1)
    pruned = prune_once(bert, x, PruneConfig(enabled=True, ratio=0.5), ratio=0.5, round_to=8)
    assert choose_exporter(pruned, "auto", "logits")[0] == "optimum"
    path = export_onnx(pruned, x, tmp_path / "p.onnx", simplify=False, exporter="optimum")
    np.testing.assert_allclose(run_onnx(path, x), pruned.forward_numpy(x), atol=1e-4)


def test_kdc_graphs_fall_back_to_torch_with_a_reason(tmp_path):
    bert = tiny_text_adapter(tmp_path)
    name, why = choose_exporter(bert, "auto", "embedding")
    assert name == "torch" and "not a Hugging Face sequence classifier" in why
    assert choose_exporter(bert, "torch", "logits") == (
        "torch",
        "requested (export.exporter: torch)",
    )
    with pytest.raises(UserError, match="export.exporter"):
        choose_exporter(bert, "optimum", "embedding")


def test_the_fallback_reason_names_the_users_model_not_kdcs_wrapper():
    vit = tiny_vit(["a", "b"], channels=1, hidden=8, layers=1, heads=2)
    name, why = choose_exporter(HFImageAdapter(vit), "auto", "logits")
    assert name == "torch" and "ViTForImageClassification is not" in why
    assert "PixelLogits" not in why


def test_an_operator_a_later_opset_exports_names_export_opset(tmp_path, monkeypatch, capfd):
    """The TorchScript exporter's "added in version N" becomes `export.opset: N`, and what it
    printed as it failed is held back."""
    from types import SimpleNamespace

    def refuse(*args, **kwargs):
        os.write(1, b"graph dump\n")  # as its C++ side prints, to file descriptor 1
        raise torch.onnx.errors.UnsupportedOperatorError("aten::stft", 17, 19)

    adapter = SimpleNamespace(
        module=torch.nn.Linear(2, 2),
        input_names=["x"],
        dynamic_axes=dict,
        exporting=contextlib.nullcontext,
    )
    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(UserError) as e:
        export_onnx(adapter, {"x": np.zeros((2, 2), np.float32)}, tmp_path / "m.onnx")
    assert e.value.field == "export.opset" and e.value.fix == "set export.opset: 19", e.value
    assert "'aten::stft'" in e.value.message and "Support" not in e.value.message, e.value
    assert "graph dump" not in capfd.readouterr().out
