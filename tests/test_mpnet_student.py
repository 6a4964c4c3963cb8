"""An MPNet teacher's student with fewer attention heads: MPNet's relative position bias (an
embedding of one column per head, shared by every layer) is cut to the student's heads. Its head
axis was taken for the hidden one and the search (`strategy: evolution`) crashed on the first
candidate with fewer heads (exit 3, "The size of tensor a (32) must match the size of tensor b
(2)")."""

from __future__ import annotations

import numpy as np
import torch
from tiny import tiny_bert

from kdc.models import load_student
from kdc.models.hf import HFTextAdapter


def test_an_mpnet_student_with_fewer_heads_runs_saves_and_loads(tmp_path):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    _, tok = tiny_bert(tmp_path)
    config = MPNetConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    teacher = HFTextAdapter(MPNetForSequenceClassification(config).eval(), tok, max_length=16)
    bias = teacher.model.mpnet.encoder.relative_attention_bias.weight
    student = teacher.sliced({"layers": [1, 3], "hidden_size": 16, "num_attention_heads": 2})
    got = student.model.mpnet.encoder.relative_attention_bias.weight
    assert got.shape == (bias.shape[0], 2)
    strongest = torch.sort(torch.topk(bias.pow(2).sum(0), 2).indices).values
    torch.testing.assert_close(got, bias[:, strongest])
    inputs = student.encode(["a good film", "an awful plot"])
    logits = student.forward_numpy(inputs)
    assert logits.shape == (2, 2) and np.isfinite(logits).all()
    student.save(tmp_path / "student")
    loaded = load_student(tmp_path / "student", max_length=16)
    np.testing.assert_allclose(loaded.forward_numpy(inputs), logits, atol=1e-6)
