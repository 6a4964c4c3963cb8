"""`distill.attention_dropout`: the student's attention-probability dropout while training, set
on every attention module (HF sdpa and eager paths) and in the saved config."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertForSequenceClassification

from kdc.models.hf import set_attention_dropout
from tests.helpers.tiny import config_of, tiny_bert, tiny_vit, write_yaml


def _train_mode_outputs(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    model.train()
    with torch.no_grad():
        return model(**inputs).logits, model(**inputs).logits


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_attention_dropout_set_to_zero_leaves_only_hidden_dropout(tmp_path, attn):
    config = tiny_bert(tmp_path, layers=3)[0].config
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    for m in model.modules():  # no dropout anywhere but where the tested call puts it
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    assert set_attention_dropout(model, 0.5) == 3  # one self-attention per layer
    inputs = {"input_ids": torch.randint(5, 20, (4, 12)), "attention_mask": torch.ones(4, 12)}
    a, b = _train_mode_outputs(model, inputs)
    assert not torch.allclose(a, b)  # the attention dropout at 0.5 is live in training

    assert set_attention_dropout(model, 0.0) == 3
    assert model.config.attention_probs_dropout_prob == 0.0
    a, b = _train_mode_outputs(model, inputs)
    torch.testing.assert_close(a, b)
    model.eval()
    with torch.no_grad():  # inference never applied it: unchanged
        torch.testing.assert_close(model(**inputs).logits, a)


def test_hidden_dropout_is_left_alone(tmp_path):
    model, _ = tiny_bert(tmp_path, layers=2)
    set_attention_dropout(model, 0.0)
    assert model.config.hidden_dropout_prob == 0.1
    kept = [m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert kept.count(0.1) >= 2 * 2 + 1  # each layer's two outputs + the embeddings


def test_a_wrappers_hidden_dropout_and_an_integer_probability():
    from transformers import MPNetConfig, MPNetForSequenceClassification, ViTConfig
    from transformers import ViTForImageClassification as ViT

    mpnet = MPNetForSequenceClassification(
        MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
    )
    assert set_attention_dropout(mpnet, 0.0) == 2  # MPNetSelfAttention, not its wrapper
    wrappers = [m for m in mpnet.modules() if type(m).__name__ == "MPNetAttention"]
    assert wrappers and all(w.dropout.p == 0.1 and w.attn.dropout.p == 0.0 for w in wrappers)
    vit = ViT(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=8,
            patch_size=4,
            attention_probs_dropout_prob=0,
        )
    )  # an int, as a YAML/JSON 0 reads
    assert set_attention_dropout(vit, 0.3) == 1
    assert vit.config.attention_probs_dropout_prob == 0.3


def test_distilbert_and_vit_attention_modules_are_found():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    bert = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32)
    )
    assert set_attention_dropout(bert, 0.0) == 2
    assert bert.config.attention_dropout == 0.0
    vit = tiny_vit(["a", "b"], channels=1, hidden=16, layers=2, heads=2)
    assert set_attention_dropout(vit, 0.0) == 2
    assert vit.config.attention_probs_dropout_prob == 0.0


class Attention(torch.nn.Module):
    """timm's `vision_transformer.Attention` as timm 1.x writes it (timm is not installed here):
    dropout on the attention probabilities is `attn_drop`, passed to SDPA as `dropout_p`."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.fused_attn = heads, True
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.attn_drop = torch.nn.Dropout(0.1)
        self.proj = torch.nn.Linear(dim, dim)
        self.proj_drop = torch.nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        p = self.attn_drop.p if self.training else 0.0
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


def test_timm_attention_drops_attn_drop_and_keeps_proj_drop():
    model = torch.nn.Sequential(Attention(), Attention())
    assert set_attention_dropout(model, 0.0) == 2
    assert [(m.attn_drop.p, m.proj_drop.p) for m in model] == [(0.0, 0.1)] * 2
    for m in model:
        m.proj_drop.p = 0.0
    model.train()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # no dropout left in training


def test_stage_trains_and_saves_the_student_without_attention_dropout(
    bert_project, tmp_path, capsys
):
    from kdc import api

    cfg = config_of(bert_project)
    cfg["distill"].update(epochs=1, attention_dropout=0.0)
    path = write_yaml(tmp_path / "model.yaml", cfg)
    api.search(path, "host", tmp_path / "run", quiet=True)
    api.distill(path, "host", tmp_path / "run")
    assert "attention dropout 0 in 2 attention modules" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "distill" / "student" / "config.json").read_text())
    assert saved["attention_probs_dropout_prob"] == 0.0
    assert saved["hidden_dropout_prob"] == 0.1
