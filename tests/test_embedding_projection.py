"""A student sliced from an ELECTRA or DeBERTa-v2 teacher whose embeddings are narrower than its
hidden size (`embedding_size`, projected up by `embeddings_project` / `embed_proj`) keeps the
projection, cut to the student's hidden channels: its embedding output is the teacher's, sliced.
Hugging Face builds the projection only when `embedding_size` differs from `hidden_size`, so a
student as wide as the teacher's embeddings was built without one and dropped the teacher's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_bert

from kdc.models import load_student
from kdc.models.hf import HFTextAdapter

SIZES = {
    "embedding_size": 16,
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "num_labels": 2,
}


def _electra(vocab: int) -> torch.nn.Module:
    from transformers import ElectraConfig, ElectraForSequenceClassification

    return ElectraForSequenceClassification(ElectraConfig(vocab_size=vocab, **SIZES))


def _deberta(vocab: int) -> torch.nn.Module:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    config = DebertaV2Config(vocab_size=vocab, type_vocab_size=2, **SIZES)
    return DebertaV2ForSequenceClassification(config)


FAMILIES = {"electra": _electra, "deberta": _deberta}


def _projected(adapter: HFTextAdapter, x: dict[str, np.ndarray]) -> torch.Tensor:
    """The output of the embeddings' projection (ELECTRA's after their LayerNorm, DeBERTa's
    before it)."""
    (proj,) = [
        m
        for n, m in adapter.model.named_modules()
        if n.endswith(("embeddings_project", "embed_proj"))
    ]
    out: list[torch.Tensor] = []
    handle = proj.register_forward_hook(lambda mod, args, y: out.append(y))
    with torch.no_grad():
        adapter.model(**{k: torch.from_numpy(v) for k, v in x.items()})
    handle.remove()
    return out[0]


@pytest.mark.parametrize("hidden", [16, 32])  # as wide as the teacher's embeddings, wider
@pytest.mark.parametrize("family", FAMILIES)
def test_the_student_keeps_the_teachers_embedding_projection(tmp_path, family, hidden):
    _, tok = tiny_bert(tmp_path)
    torch.manual_seed(0)
    model = FAMILIES[family](len(tok)).eval()
    with torch.no_grad():  # distinct values everywhere (the init zeroes biases)
        for p in model.parameters():
            p.normal_()
    teacher = HFTextAdapter(model, tok, max_length=16)
    student = teacher.sliced({"layers": [1], "hidden_size": hidden, "num_attention_heads": 1})
    x = student.encode(["a good film", "an awful plot that i really hate"])
    t, s = _projected(teacher, x), _projected(student, x)
    assert s.shape[-1] == hidden
    # each student channel is one of the teacher's, all distinct
    gap = (s.unsqueeze(-1) - t.unsqueeze(-2)).abs().amax(dim=(0, 1))  # student x teacher
    best = gap.min(dim=1)
    assert best.values.max() < 1e-4 * t.abs().max() and len(set(best.indices.tolist())) == hidden

    student.save(tmp_path / "student")
    loaded = load_student(tmp_path / "student", max_length=16)
    np.testing.assert_array_equal(loaded.forward_numpy(x), student.forward_numpy(x))
