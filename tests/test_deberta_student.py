"""A DeBERTa-v2 teacher's student narrower than it runs: DeBERTa's pooler is as wide as
`pooler_hidden_size`, which its config sets to the hidden size; the student kept the teacher's,
and the search (`strategy: evolution`) crashed on the first narrower candidate it scored (exit 3,
"mat1 and mat2 shapes cannot be multiplied (16x16 and 32x32)")."""

from __future__ import annotations

import numpy as np
import torch
from tiny import tiny_bert

from kdc.models import load_student
from kdc.models.hf import HFTextAdapter


def test_a_narrower_deberta_student_runs_saves_and_loads(tmp_path):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    _, tok = tiny_bert(tmp_path)
    config = DebertaV2Config(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    teacher = HFTextAdapter(DebertaV2ForSequenceClassification(config).eval(), tok, max_length=16)
    student = teacher.sliced({"layers": [1, 3], "hidden_size": 16, "intermediate_size": 32})
    assert student.config.pooler_hidden_size == 16 and teacher.config.pooler_hidden_size == 32
    inputs = student.encode(["a good film", "an awful plot"])
    logits = student.forward_numpy(inputs)
    assert logits.shape == (2, 2) and np.isfinite(logits).all()
    student.save(tmp_path / "student")
    loaded = load_student(tmp_path / "student", max_length=16)
    np.testing.assert_allclose(loaded.forward_numpy(inputs), logits, atol=1e-6)
