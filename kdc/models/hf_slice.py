"""Slicing a Hugging Face teacher's weights into a smaller student of its family
(`TransformerAdapter.sliced`): per axis, the teacher's strongest hidden channels, whole heads and
FFN units by their weights' L2 norms, reused by every student sliced from one teacher."""

from __future__ import annotations

import math
import re
import weakref
from typing import Any

import torch
from torch import nn

from kdc.errors import UserError
from kdc.models.hf import INTERMEDIATE_KEYS, PROJECTIONS, layer_list

# the embedding tables, widened by a channel where the student keeps the projection
EMBEDDING_TABLE = re.compile(r"\.embeddings\.\w+_embeddings\.weight$")
SHARED_KINDS = ("hidden", "head_bias")  # axes sliced alike in every layer
# Which axes of a block's tensors index attention dims ("heads") or FFN units ("ffn");
# every other axis that changes size indexes the residual stream ("hidden"). Projections into
# head dims: BERT's, DistilBERT's, DeBERTa's (and its relative-position ones), MPNet's.
AXIS_KINDS = [
    (
        re.compile(
            r"\.(query|key|value|q_lin|k_lin|v_lin|(pos_)?(query|key)_proj|value_proj|attn\.[qkv])"
            r"\.(weight|bias)$"
        ),
        0,
        "heads",
    ),
    (re.compile(r"\.(attention\.output\.dense|out_lin|attn\.o)\.weight$"), 1, "heads"),
    (re.compile(r"\.(intermediate\.dense|ffn\.lin1)\.(weight|bias)$"), 0, "ffn"),
    (re.compile(r"(?<!attention)\.(output\.dense|ffn\.lin2)\.weight$"), 1, "ffn"),
    # MPNet's relative position bias, one column per head, shared by every layer: the student's
    # heads take its strongest columns
    (re.compile(r"relative_attention_bias\.weight$"), 1, "head_bias"),
]


# Per teacher module: (tensor name, axis, storage, version) -> squared L2 norm of its slices
# along that axis, the importance every student sliced from that teacher reuses.
_IMPORTANCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _slice_norms(teacher: nn.Module, name: str, t: torch.Tensor, axis: int) -> torch.Tensor:
    cache = _IMPORTANCE.setdefault(teacher, {})
    key = (name, axis, t.data_ptr(), t._version)  # weights changed in place are recomputed
    if key not in cache:
        cache[key] = t.float().pow(2).sum(dim=[d for d in range(t.dim()) if d != axis])
    return cache[key]


def _axis_kind(name: str, axis: int) -> str:
    return next((k for rx, ax, k in AXIS_KINDS if ax == axis and rx.search(name)), "hidden")


def _head_dims(imp: torch.Tensor, n_dims: int, head_dim: int, new_head_dim: int) -> torch.Tensor:
    """`n_dims` attention dims: whole teacher heads by importance, each cut to its strongest
    `new_head_dim` dims when heads shrink; the strongest single dims when heads cannot be kept."""
    per = min(head_dim, new_head_dim)
    n_heads = n_dims // per
    if n_dims % per or n_heads > len(imp) // head_dim:
        return torch.sort(torch.topk(imp, n_dims).indices).values
    by_head = imp.view(-1, head_dim)
    heads = torch.sort(torch.topk(by_head.sum(1), n_heads).indices).values
    dims = [h * head_dim + torch.sort(torch.topk(by_head[h], per).indices).values for h in heads]
    return torch.cat(dims)


def _widened_embeddings(state: dict[str, torch.Tensor], e: int) -> dict[str, torch.Tensor]:
    """`state` with a channel added to its `e`-wide embeddings, for a student as wide as them
    that keeps the projection (Hugging Face builds it only when `embedding_size` differs from
    `hidden_size`). The projection reads nothing from the new channel; each table's new column
    is its rows' means, so the summed embeddings' new channel is the mean of the others: a
    LayerNorm over them (ELECTRA's) sees the same mean and e/(e+1) times the variance, which its
    weight scaled by sqrt(e/(e+1)) undoes (up to its eps), and gives the new channel 0."""
    out = dict(state)
    for name, t in state.items():
        if name.endswith(tuple(f"{p}.weight" for p in PROJECTIONS)):
            out[name] = torch.cat([t, t.new_zeros(len(t), 1)], 1)
        elif EMBEDDING_TABLE.search(name) and t.shape[-1] == e:
            out[name] = torch.cat([t, t.mean(1, keepdim=True)], 1)
        elif name.endswith("embeddings.LayerNorm.weight") and t.shape == (e,):
            out[name] = torch.cat([t * math.sqrt(e / (e + 1)), t.new_zeros(1)])
        elif name.endswith("embeddings.LayerNorm.bias") and t.shape == (e,):
            out[name] = torch.cat([t, t.new_zeros(1)])
    return out


def slice_state(
    teacher: nn.Module, student: nn.Module, keep: list[int], tconf: Any
) -> dict[str, torch.Tensor]:
    """The student's state dict filled with teacher slices (see `HFTextAdapter.sliced`)."""
    blocks = layer_list(teacher)
    prefix = next(n for n, m in teacher.named_modules() if m is blocks)
    layer_rx = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    tstate, sstate = teacher.state_dict(), student.state_dict()
    e = getattr(tconf, "embedding_size", None)
    wider = e is not None and getattr(student.config, "embedding_size", None) == e + 1
    source = _widened_embeddings(tstate, e) if wider else tstate
    plan: list[tuple[str, str, int | None, list[tuple[int, str]]]] = []
    imp: dict[tuple[str, int | None], torch.Tensor] = {}
    for name, target in sstate.items():
        m = layer_rx.match(name)
        layer = keep[int(m.group(1))] if m else None
        src = layer_rx.sub(f"{prefix}.{layer}.", name) if m else name
        t = source.get(src)
        if t is None or t.dim() != target.dim():
            raise UserError(
                f"cannot slice {type(teacher).__name__}: no teacher tensor for {name}",
                field="teacher",
                fix="use a BERT-like encoder",
            )
        axes = [(a, _axis_kind(src, a)) for a in range(t.dim()) if t.shape[a] != target.shape[a]]
        for a, kind in axes:
            key = (kind, None if kind in SHARED_KINDS else layer)
            imp[key] = imp.get(key, 0) + _slice_norms(teacher, src, tstate[src], a)
        plan.append((name, src, layer, axes))
    head_dim = tconf.hidden_size // tconf.num_attention_heads
    new_head_dim = student.config.hidden_size // student.config.num_attention_heads
    wanted = {
        "head_bias": student.config.num_attention_heads,
        "hidden": student.config.hidden_size,
        "heads": student.config.hidden_size,
        "ffn": next(
            getattr(student.config, k) for k in INTERMEDIATE_KEYS if hasattr(student.config, k)
        ),
    }
    index = {
        key: (
            _head_dims(v, wanted["heads"], head_dim, new_head_dim)
            if key[0] == "heads"
            else torch.sort(torch.topk(v, wanted[key[0]]).indices).values
        )
        for key, v in imp.items()
    }
    out = {}
    for name, src, layer, axes in plan:
        t = source[src]
        for a, kind in axes:
            t = t.index_select(a, index[(kind, None if kind in SHARED_KINDS else layer)])
        if t.shape != sstate[name].shape:
            raise UserError(
                f"cannot slice {src} {list(tstate[src].shape)} to {list(sstate[name].shape)}",
                field="student",
                fix="choose sizes that divide the teacher's",
            )
        out[name] = t.clone() if t is tstate[src] else t  # index_select already copied
    return out
