"""The latency model of a head-pruned transformer: its architecture carries each layer's heads
and the head size (`hf.attention_sizes`), and the cost model costs each layer's attention by
them. It read layer 0's head count for every layer and costed Q/K/V/O as hidden × hidden, so a
student whose layers keep 12 and 4 heads was predicted as one of 4 and 4 heads of full width."""

from __future__ import annotations

import pytest
import torch
from kernel_lists import kernels_from_architecture, kernels_from_onnx
from tiny import tiny_bert
from transformers import BertConfig, BertForSequenceClassification

from kdc.compress.space import space_for
from kdc.compress.student import derive_student
from kdc.deploy.estimate import predict_architecture
from kdc.errors import UserError
from kdc.models.hf import HFTextAdapter
from kdc.profiles import load_profile

TEXTS = ["a good film", "an awful plot", "the movie was fine", "ok"]


def _bert(tmp_path, pruned_heads, hidden=32, heads=4, layers=2):
    """A random BERT classifier of `heads` heads per layer, `pruned_heads` pruned by
    transformers (as a config.json's pruned_heads states them)."""
    _, tok = tiny_bert(tmp_path)
    torch.manual_seed(0)
    conf = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        pruned_heads=pruned_heads,
    )
    return HFTextAdapter(BertForSequenceClassification(conf).eval(), tok, max_length=16)


def test_a_head_pruned_architecture_costs_what_its_export_does(tmp_path):
    """Layers keeping 4 and 1 heads of 8 in a hidden size of 32: the architecture's kernels
    are the exported graph's, FLOPs and bytes (it costed both layers' attention 32 wide)."""
    from kdc.export.onnx_export import export_onnx

    adapter = _bert(tmp_path, {1: [0, 1, 3]})
    arch = adapter.architecture()
    assert (arch["num_attention_heads"], arch["layer_heads"]) == (4, [4, 1])
    assert arch["attention_head_size"] == 8
    x = adapter.encode(TEXTS)
    export_onnx(adapter, x, tmp_path / "m.onnx")
    shapes = {"input_ids": [2, 16], "attention_mask": [2, 16]}
    onnx_k = kernels_from_onnx(tmp_path / "m.onnx", batch=2, input_shapes=shapes)
    arch_k = kernels_from_architecture(arch, 2, shapes)
    assert sorted(k.kind for k in onnx_k) == sorted(k.kind for k in arch_k)
    assert sum(k.flops for k in arch_k) == pytest.approx(sum(k.flops for k in onnx_k), rel=0.01)
    assert sum(k.bytes for k in arch_k) == pytest.approx(sum(k.bytes for k in onnx_k), rel=0.02)


def test_layers_keeping_different_heads_are_predicted_between_the_uniform_ones(tmp_path):
    """BERT-base widths (768, heads of 64), 2 layers: 12/4 heads is predicted slower than 4/4
    and faster than 12/12; an unpruned architecture has no new keys, so a search's students
    are predicted as before."""
    host = load_profile("host")
    shapes = {"input_ids": [1, 128], "attention_mask": [1, 128]}
    eight = list(range(8))
    archs = {
        name: _bert(tmp_path, pruned, hidden=768, heads=12).architecture()
        for name, pruned in {"12/12": {}, "12/4": {1: eight}, "4/4": {0: eight, 1: eight}}.items()
    }
    assert not {"layer_heads", "attention_head_size"} & set(archs["12/12"])
    ms = {k: predict_architecture(a, host, input_shapes=shapes)["p50_ms"] for k, a in archs.items()}
    assert ms["4/4"] < ms["12/4"] < ms["12/12"]


def test_students_of_a_teacher_whose_layers_keep_different_heads(tmp_path):
    """Students as wide as the teacher keep its kept layers' heads, which their cost carries
    as the built student's architecture does; other widths have all their heads."""
    teacher = _bert(tmp_path, {1: [0, 1, 3], 2: [0, 1]}, layers=4)
    x = teacher.encode(TEXTS)
    space = space_for(teacher, x, 8)
    for genes in ({"num_hidden_layers": 2}, {"num_hidden_layers": 3}, {}):
        cand = space.decode(space.from_architecture(genes))
        student = derive_student(teacher, cand.spec, x)
        built = {k: v for k, v in student.architecture().items() if k != "params"}
        assert cand.architecture == built, cand.spec
        assert all(cand.cost[k] == v for k, v in built.items())
    assert space.decode(space.teacher_genes).cost["layer_heads"] == [4, 1, 2, 4]
    other = space.decode(space.from_architecture({"hidden_size": 16, "num_attention_heads": 2}))
    assert "layer_heads" not in other.cost and "attention_head_size" not in other.cost


@pytest.mark.parametrize("layer_heads", [[4], [4, 0], ["x", 1]])
def test_a_malformed_layer_heads_is_one_line(layer_heads):
    arch = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "max_length": 8}
    with pytest.raises(UserError) as e:
        kernels_from_architecture({**arch, "layer_heads": layer_heads})
    assert "\n" not in str(e.value) and "field 'architecture.layer_heads'" in str(e.value)
