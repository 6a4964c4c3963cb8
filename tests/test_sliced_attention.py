"""A narrower student sliced from a DeBERTa-v2 or MPNet teacher keeps whole teacher heads, the
same attention dims in its query, key, value (and DeBERTa's relative-position projections) and
in the attention output's inputs. Their projections are named `query_proj`/`attn.q`, not BERT's
`query`: DeBERTa's value rows were cut by the hidden channels' index while its attention output's
columns were cut by the heads' index (a value dim feeding another dim's output weights), and
MPNet's attention dims were any strongest hidden channels, not whole heads."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_bert

from kdc.models.hf import HFTextAdapter

# teachers of 4 heads of 8 dims
SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "num_labels": 2,
}


def _deberta(vocab: int) -> torch.nn.Module:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    config = DebertaV2Config(
        vocab_size=vocab,
        **SIZES,
        relative_attention=True,
        pos_att_type=["c2p", "p2c"],
        share_att_key=False,
    )
    return DebertaV2ForSequenceClassification(config)


def _mpnet(vocab: int) -> torch.nn.Module:
    from transformers import MPNetConfig, MPNetForSequenceClassification

    config = MPNetConfig(vocab_size=vocab, **SIZES)
    return MPNetForSequenceClassification(config)


# per family: the attention's projections into head dims, and its output projection
FAMILIES = {
    "deberta": (
        _deberta,
        "attention.self",
        ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj"),
        "attention.output.dense",
    ),
    "mpnet": (_mpnet, "attention.attn", ("q", "k", "v"), "attention.attn.o"),
}


def _sources(student: torch.Tensor, teacher: torch.Tensor) -> list[int]:
    """For each row of `student`, the row of `teacher` whose values it is a slice of."""
    return [next(i for i, t in enumerate(teacher) if torch.isin(s, t).all()) for s in student]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_narrower_student_keeps_whole_heads_alike_in_every_projection(tmp_path, family):
    build, attention, projections, output = FAMILIES[family]
    _, tok = tiny_bert(tmp_path)
    torch.manual_seed(0)
    model = build(len(tok)).eval()
    with torch.no_grad():  # distinct values everywhere (the init zeroes biases)
        for p in model.parameters():
            p.normal_()
    teacher = HFTextAdapter(model, tok, max_length=16)
    student = teacher.sliced({"layers": [0, 1], "hidden_size": 16, "num_attention_heads": 2})
    for t_layer, s_layer in zip(
        model.base_model.encoder.layer, student.model.base_model.encoder.layer, strict=True
    ):
        t_att, s_att = t_layer.get_submodule(attention), s_layer.get_submodule(attention)
        kept = {
            name: _sources(
                getattr(s_att, name).weight.detach(), getattr(t_att, name).weight.detach()
            )
            for name in projections
        }
        t_out, s_out = t_layer.get_submodule(output), s_layer.get_submodule(output)
        kept["output"] = _sources(s_out.weight.detach().T, t_out.weight.detach().T)
        dims = kept["output"]
        assert all(v == dims for v in kept.values()), kept
        heads = torch.tensor(dims).view(2, 8)  # teacher heads of 8 dims, kept whole
        assert (heads - heads[:, :1] == torch.arange(8)).all() and (heads[:, 0] % 8 == 0).all()


def test_an_electra_teacher_with_narrower_embeddings_states_its_hidden_width(tmp_path):
    """ELECTRA's embeddings (`embedding_size`) are projected up to the hidden size: the width
    the search slices and pruning cuts is the hidden one (was the embeddings', 16)."""
    from transformers import ElectraConfig, ElectraForSequenceClassification

    _, tok = tiny_bert(tmp_path)
    config = ElectraConfig(
        vocab_size=len(tok),
        embedding_size=16,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    teacher = HFTextAdapter(ElectraForSequenceClassification(config).eval(), tok, max_length=16)
    assert teacher.architecture()["hidden_size"] == 48
    student = teacher.sliced({"layers": [1], "hidden_size": 32, "num_attention_heads": 2})
    assert student.architecture()["hidden_size"] == 32
