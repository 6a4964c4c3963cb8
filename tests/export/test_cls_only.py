"""A classifier that reads only [CLS] exports with a last layer computing only that position: same
logits (padded rows included), the first layers still fused, fewer FLOPs predicted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import run_onnx, tiny_text_adapter

from kdc.compress.space import space_for
from kdc.deploy.arch_cost import analyze_architecture
from kdc.deploy.onnxruntime import count_ops, optimize
from kdc.export.cls_only import ClsOnlyLayer, cls_only_last_layer, supports_cls_only
from kdc.export.onnx_export import export_onnx
from kdc.models.hf import layer_list

TEXTS = ["good movie", "the plot was awful and bad and long", "i love this film", "bad"]


def test_cls_only_layer_keeps_the_logits_and_is_put_back(tmp_path):
    bert = tiny_text_adapter(tmp_path)
    x = bert.encode(TEXTS)
    assert (x["attention_mask"] == 0).any()  # padded rows are part of the check
    ref = bert.forward_numpy(x)
    last = layer_list(bert.model)[-1]
    with cls_only_last_layer(bert) as applied:
        assert applied and isinstance(layer_list(bert.model)[-1], ClsOnlyLayer)
        np.testing.assert_allclose(bert.forward_numpy(x), ref, atol=1e-5)
    assert layer_list(bert.model)[-1] is last


@pytest.mark.parametrize("exporter", ["optimum", "torch"])
def test_cls_only_export_has_parity_and_keeps_earlier_layers_fused(tmp_path, exporter):
    bert = tiny_text_adapter(tmp_path)
    x = bert.encode(TEXTS)
    path = export_onnx(
        bert, x, tmp_path / "m.onnx", simplify=False, exporter=exporter, cls_only=True
    )
    np.testing.assert_allclose(run_onnx(path, x), bert.forward_numpy(x), atol=1e-4)
    short = {k: v[:3, :8] for k, v in x.items()}
    np.testing.assert_allclose(run_onnx(path, short), bert.forward_numpy(short), atol=1e-4)
    fused = optimize(path, tmp_path / "o.onnx", family="transformer", num_heads=2, hidden_size=32)
    assert count_ops(fused).get("Attention") == 1  # the first layer; the last has 1 query row
    np.testing.assert_allclose(run_onnx(fused, x), bert.forward_numpy(x), atol=1e-4)


def test_models_whose_head_reads_more_export_unchanged(tmp_path):
    relative = tiny_text_adapter(tmp_path, position_embedding_type="relative_key")
    assert not supports_cls_only(relative)
    eager = tiny_text_adapter(tmp_path, _attn_implementation="eager", output_attentions=True)
    assert not supports_cls_only(eager)
    with cls_only_last_layer(relative) as applied:
        assert not applied
    bert = tiny_text_adapter(tmp_path)
    with cls_only_last_layer(bert, enabled=False) as applied:
        assert not applied and not isinstance(layer_list(bert.model)[-1], ClsOnlyLayer)


def test_latency_model_costs_the_cls_only_layer(tmp_path):
    arch = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2}
    arch |= {"intermediate_size": 256, "num_labels": 2, "max_length": 128}
    full = analyze_architecture(arch, batch=1)
    cls = analyze_architecture({**arch, "cls_only_last_layer": True}, batch=1)
    flops = {k.name: k.flops for k in full.kernels}
    cls_flops = {k.name: k.flops for k in cls.kernels}
    assert cls_flops["layer0.k"] == flops["layer0.k"]  # keys and values cover the sequence
    for name in ("layer0.q", "layer0.o", "layer0.ffn1", "layer0.ffn2"):
        assert cls_flops[name] * 100 < flops[name]
    attn = next(k for k in cls.kernels if k.name == "layer0.attention")
    assert attn.scores == 2 * 128  # one query row per head
    assert cls.peak_act_elems < full.peak_act_elems / 2  # no L×L scores, no L-row FFN
    two = {**arch, "num_hidden_layers": 2}  # the first layer still computes every position
    assert (
        analyze_architecture({**two, "cls_only_last_layer": True}, batch=1).peak_act_elems
        == analyze_architecture(two, batch=1).peak_act_elems
    )


def test_search_space_predicts_what_the_export_does(tmp_path):
    torch.manual_seed(0)
    bert = tiny_text_adapter(tmp_path)
    x = bert.encode(TEXTS)
    c = space_for(bert, x, 8, cls_only=True)
    assert c.decode(c.largest()).cost["cls_only_last_layer"] is True
    plain = space_for(bert, x, 8)
    assert plain.decode(plain.largest()).cost["cls_only_last_layer"] is False


def test_architecture_path_matches_the_exported_cls_only_graph(tmp_path):
    from kernel_lists import kernels_from_architecture, kernels_from_onnx

    bert = tiny_text_adapter(tmp_path)
    x = bert.encode(TEXTS)
    path = export_onnx(bert, x, tmp_path / "m.onnx", simplify=False, cls_only=True)
    shapes = {"input_ids": [2, 16], "attention_mask": [2, 16]}
    arch = {**bert.architecture(), "cls_only_last_layer": True}
    onnx_k = kernels_from_onnx(path, batch=2, input_shapes=shapes)
    arch_k = kernels_from_architecture(arch, 2, shapes)
    assert sorted(k.kind for k in arch_k) == sorted(k.kind for k in onnx_k)  # the Slices too
    assert sum(k.flops for k in arch_k) == pytest.approx(sum(k.flops for k in onnx_k), rel=0.02)
    assert sum(k.bytes for k in arch_k) == pytest.approx(sum(k.bytes for k in onnx_k), rel=0.02)
    full = kernels_from_architecture(bert.architecture(), 2, shapes)
    assert sum(k.flops for k in arch_k) < 0.7 * sum(k.flops for k in full)
