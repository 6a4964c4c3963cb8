"""Export a classifier whose head reads only the first ([CLS]) position with a last layer that
computes only that position: its keys and values still cover every token, but the query,
attention output, feed-forward block and layer norms run on one row instead of the whole
sequence. The logits are unchanged (parity is checked as for any export); the last layer's cost
drops from a full layer to roughly its key/value projections. BERT-style layers only (BERT,
RoBERTa, XLM-R, ELECTRA heads with absolute positions); other models export unchanged."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from kdc.models.base import ModelAdapter

# Hugging Face sequence classifiers whose head reads only the last layer's first position
# (BertPooler, RobertaClassificationHead, ElectraClassificationHead: `hidden[:, 0]`).
CLS_HEADS = frozenset(
    {
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "CamembertForSequenceClassification",
        "ElectraForSequenceClassification",
    }
)


class ClsOnlyLayer(nn.Module):
    """A BERT-style encoder layer (wrapped, weights shared) that returns only position 0."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor]:
        layer, sa = self.layer, self.layer.attention.self
        b, n, _ = hidden_states.shape
        heads, d = sa.num_attention_heads, sa.attention_head_size
        first = hidden_states[:, :1]
        q = sa.query(first).view(b, 1, heads, d).transpose(1, 2)
        k = sa.key(hidden_states).view(b, n, heads, d).transpose(1, 2)
        v = sa.value(hidden_states).view(b, n, heads, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        if attention_mask is not None:  # additive, B×1×1×L (eager) or B×1×L×L (SDPA)
            scores = scores + attention_mask[:, :, :1, :]
        context = torch.matmul(torch.softmax(scores, -1), v).transpose(1, 2).reshape(b, 1, -1)
        attended = layer.attention.output(context, first)
        return (layer.output(layer.intermediate(attended), attended),)


def _bert_style(layer: nn.Module) -> bool:
    att = getattr(layer, "attention", None)
    sa = getattr(att, "self", None)
    return (
        all(isinstance(getattr(sa, p, None), nn.Linear) for p in ("query", "key", "value"))
        and all(hasattr(x, "output") for x in (att, layer))
        and hasattr(layer, "intermediate")
    )


def supports_cls_only(adapter: ModelAdapter) -> bool:
    """Whether `adapter`'s last layer can compute only [CLS] without changing its logits."""
    model = getattr(adapter, "model", None)
    cls = type(model)
    if cls.__name__ not in CLS_HEADS or not cls.__module__.startswith("transformers.models."):
        return False  # remote code may reuse a name
    config = model.config
    if (
        getattr(config, "position_embedding_type", "absolute") != "absolute"
        or config.is_decoder
        or config.output_attentions  # the encoder would read the layer's attention probabilities
    ):
        return False
    from kdc.models.hf import layer_list

    return _bert_style(layer_list(model)[-1])


@contextlib.contextmanager
def cls_only_last_layer(adapter: ModelAdapter, enabled: bool = True) -> Iterator[bool]:
    """Within the block, `adapter`'s last layer computes only [CLS] (when `enabled` and
    supported); yields whether it does. The original layer is always put back."""
    if not (enabled and supports_cls_only(adapter)):
        yield False
        return
    from kdc.models.hf import layer_list

    layers = layer_list(adapter.model)  # type: ignore[attr-defined]
    original = layers[-1]
    layers[-1] = ClsOnlyLayer(original)
    try:
        yield True
    finally:
        layers[-1] = original
