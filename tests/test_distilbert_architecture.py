"""A DistilBERT teacher's architecture states its FFN width (`ffn.lin1`, config `hidden_dim`):
it was None, so its fixed student was "not a point of the search space" and got no latency
prediction in the search stage."""

from __future__ import annotations

import torch
from tiny import tiny_bert

from kdc.models.hf import HFTextAdapter


def test_a_distilbert_architecture_has_its_ffn_width(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    _, tok = tiny_bert(tmp_path)
    config = DistilBertConfig(
        vocab_size=len(tok), dim=32, n_layers=4, n_heads=2, hidden_dim=48, num_labels=2
    )
    torch.manual_seed(0)
    teacher = HFTextAdapter(DistilBertForSequenceClassification(config).eval(), tok, 16)
    arch = teacher.architecture()
    assert (arch["num_hidden_layers"], arch["hidden_size"], arch["intermediate_size"]) == (
        4,
        32,
        48,
    )
    student = teacher.sliced({"layers": [1, 3], "intermediate_size": 24})
    assert student.architecture()["intermediate_size"] == 24
