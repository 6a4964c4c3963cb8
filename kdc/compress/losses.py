"""Distillation losses, registered by name with the feature taps they read (see hooks.py).

Each loss takes a `LossInputs` and keyword parameters (from `distill.losses[].params`) and returns
a scalar. Student features wider or narrower than the teacher's go through learned projections
(`LossInputs.project`), which train with the student and are never exported.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kdc.errors import UserError

if TYPE_CHECKING:
    from kdc.config import KdcConfig


class Projections(nn.Module):
    """Learned student→teacher width maps (Linear, or 1×1 conv for feature maps), one per feature
    and width pair, created on first use: run one batch through the losses before building the
    optimizer so their parameters train with the student."""

    def __init__(self) -> None:
        super().__init__()
        self.maps = nn.ModuleDict()
        self.used: set[str] = set()

    def forward(self, name: str, s: torch.Tensor, width: int) -> torch.Tensor:
        axis = 1 if s.dim() == 4 else -1
        if s.shape[axis] == width:
            return s
        key = f"{name}_{s.shape[axis]}_{width}"
        if key not in self.maps:
            make = (
                nn.Conv2d(s.shape[1], width, 1) if s.dim() == 4 else nn.Linear(s.shape[-1], width)
            )
            self.maps[key] = make.to(s.device)
        self.used.add(key)
        return self.maps[key](s)

    def probe(self, run: Callable[[], object]) -> None:
        """Run `run` (one batch through the losses) to create the maps it needs, and forget the
        maps it did not use (stale widths after pruning)."""
        self.used = set()
        run()
        for key in [k for k in self.maps if k not in self.used]:
            del self.maps[key]


@dataclass
class LossInputs:
    """What a loss may use: logits, labels, teacher logits, tapped features by name, the padding
    mask of text inputs (B×L) and the projection bank."""

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    labels: torch.Tensor | None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: torch.Tensor | None = None
    project: Projections | None = None

    def to_teacher_width(self, name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        width = t.shape[1] if t.dim() == 4 else t.shape[-1]
        if self.project is None:
            if (s.shape[1] if s.dim() == 4 else s.shape[-1]) != width:
                raise ValueError(f"feature '{name}' widths differ and no projections were given")
            return s
        return self.project(name, s, width)


LossFn = Callable[..., torch.Tensor]
LOSSES: dict[str, LossFn] = {}
LOSS_TAPS: dict[str, tuple[str, ...]] = {}  # loss name → prefixes of the taps it reads


def loss_params(name: str) -> list[str]:
    """The parameters loss `name` takes in its `params` (all but the loss inputs)."""
    return list(inspect.signature(LOSSES[name]).parameters)[1:]


def register(name: str, taps: tuple[str, ...] = ()) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        LOSS_TAPS[name] = taps
        return fn

    return deco


# Default recipes per family, chosen by measurement on the tiny test projects (mean of seeds, eval
# split): a randomly initialised 4-layer BERT student distilled 8 epochs reached the same accuracy
# (1.0) with every recipe, but KL to the teacher was 0.519 with logits alone, 0.337 with +hidden,
# 0.435 with +hidden+attention. On the digits CNN no feature loss beat logit KD (4 epochs, 10
# seeds: 0.8405 vs 0.837-0.845 accuracy, all with higher KL; from scratch 0.738 vs 0.644-0.723).
DEFAULT_LOSSES: dict[str, list[dict]] = {
    "transformer": [{"name": "logits"}, {"name": "hidden"}],
    "cnn": [{"name": "logits"}],
}
# Task recipes, chosen before the family's: a sentence encoder's output is the embedding itself.
TASK_LOSSES: dict[str, list[dict]] = {
    "sentence-embedding": [
        {"name": "embedding", "params": {"on": "output"}},
        {"name": "relation", "params": {"on": "output"}},
    ],
}
# Parameters a task gives a configured loss unless it sets them: an embedding model's target is
# its output embedding, not the tapped `pooled` feature (for BERT, the unused CLS pooler).
TASK_LOSS_DEFAULTS: dict[str, dict[str, dict]] = {
    "sentence-embedding": {"embedding": {"on": "output"}, "relation": {"on": "output"}},
}


def uniform_mapping(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer for each student layer, spread evenly and ending at the last layer."""
    return [
        min(n_teacher - 1, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)
    ]


def layer_pairs(x: LossInputs, prefix: str, mapping: list[int] | None) -> list[tuple[int, int]]:
    """(student, teacher) indices of the `prefix{i}` features, uniform unless `mapping` is given."""
    n_s = sum(
        1 for k in x.student_features if k.removeprefix(prefix).isdigit() and k.startswith(prefix)
    )
    n_t = sum(
        1 for k in x.teacher_features if k.removeprefix(prefix).isdigit() and k.startswith(prefix)
    )
    if not n_s or not n_t:
        return []
    if mapping is None:
        return list(enumerate(uniform_mapping(n_s, n_t)))
    if len(mapping) != n_s or not all(0 <= j < n_t for j in mapping):
        raise UserError(
            f"mapping {mapping} must give a teacher layer (0..{n_t - 1}) for each of "
            f"the {n_s} student layers",
            field="distill.losses.params.mapping",
            fix=f"e.g. {uniform_mapping(n_s, n_t)}",
        )
    return list(enumerate(mapping))


def _masked_mean(v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `v` (B×L…) over positions where `mask` (B×L) is 1."""
    if mask is None or v.dim() < 2 or v.shape[:2] != mask.shape:
        return v.mean()
    m = mask.to(v.dtype).reshape(*mask.shape, *([1] * (v.dim() - 2))).expand_as(v)
    return (v * m).sum() / m.sum().clamp_min(1)


@register("logits")
def logit_kd(x: LossInputs, temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton KD: α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)."""
    t = temperature
    kl = (
        F.kl_div(
            F.log_softmax(x.student_logits / t, -1),
            F.log_softmax(x.teacher_logits / t, -1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )
    if x.labels is None or alpha >= 1:
        return kl
    return alpha * kl + (1 - alpha) * F.cross_entropy(x.student_logits, x.labels)


@register("ce")
def cross_entropy(x: LossInputs) -> torch.Tensor:
    """Task loss alone (fine-tuning without a teacher); refused where rows have no labels
    (`check_losses`)."""
    return F.cross_entropy(x.student_logits, x.labels)


@register("hidden", taps=("hidden", "embeddings"))
def hidden_mse(
    x: LossInputs, mapping: list[int] | None = None, embeddings: bool = True
) -> torch.Tensor:
    """FitNets / TinyBERT: MSE between each student layer's output, projected to the teacher's
    width, and its mapped teacher layer's (and between the embeddings); padding excluded."""
    pairs = [(f"hidden{i}", f"hidden{j}") for i, j in layer_pairs(x, "hidden", mapping)]
    if embeddings and "embeddings" in x.student_features and "embeddings" in x.teacher_features:
        pairs.insert(0, ("embeddings", "embeddings"))
    if not pairs:
        raise UserError(
            "the hidden loss found no hidden-state taps in this model",
            field="distill.losses",
            fix="remove the hidden loss",
        )
    total = x.student_logits.new_zeros(())
    for s_name, t_name in pairs:
        s, t = x.student_features[s_name], x.teacher_features[t_name]
        s = x.to_teacher_width(s_name, s, t)
        if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
            s = F.adaptive_avg_pool2d(s, t.shape[-2:])
        total = total + _masked_mean((s - t).pow(2), x.mask)
    return total / len(pairs)


def _relation_heads(v: torch.Tensor, heads: int) -> torch.Tensor:
    """B×h×L×d → B×heads×L×(h·d/heads): the concatenated heads split into `heads` relation heads
    (MiniLMv2), so students and teachers with different head counts compare."""
    b, h, n, d = v.shape
    if h == heads:
        return v
    return v.transpose(1, 2).reshape(b, n, heads, h * d // heads).transpose(1, 2)


def _relation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """log softmax(a bᵀ/√d) over keys, padded keys excluded."""
    scores = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e4)  # finite: no 0·inf
    return F.log_softmax(scores, -1)


def _transformer_attention(
    x: LossInputs,
    pairs: list[tuple[int, int]],
    maps: float,
    values: float,
    relation_heads: int | None,
) -> torch.Tensor:
    total = x.student_logits.new_zeros(())
    for i, j in pairs:
        sq, sk, sv = (x.student_features[f"{k}{i}"] for k in ("query", "key", "value"))
        tq, tk, tv = (x.teacher_features[f"{k}{j}"] for k in ("query", "key", "value"))
        r = relation_heads or math.gcd(sq.shape[1], tq.shape[1])
        widths = (sq.shape[1] * sq.shape[-1], tq.shape[1] * tq.shape[-1])
        if any(w % r for w in widths):
            raise UserError(
                f"relation_heads {r} does not divide the attention widths {widths[0]} (student) "
                f"and {widths[1]} (teacher)",
                field="distill.losses.params.relation_heads",
                fix="use a divisor of both, or leave it out (then "
                f"{math.gcd(sq.shape[1], tq.shape[1])}: the heads both have)",
            )
        s = {k: _relation_heads(v, r) for k, v in (("q", sq), ("k", sk), ("v", sv))}
        t = {k: _relation_heads(v, r) for k, v in (("q", tq), ("k", tk), ("v", tv))}
        if maps:  # TinyBERT: MSE between attention distributions
            diff = (
                (_relation(s["q"], s["k"], x.mask).exp() - _relation(t["q"], t["k"], x.mask).exp())
                .pow(2)
                .sum(-1)
            )
            total = total + maps * _masked_mean(diff.transpose(1, 2), x.mask)
        if values:  # MiniLM: KL between value relations
            lt, ls = _relation(t["v"], t["v"], x.mask), _relation(s["v"], s["v"], x.mask)
            kl = (lt.exp() * (lt - ls)).sum(-1)
            total = total + values * _masked_mean(kl.transpose(1, 2), x.mask)
    return total / len(pairs)


def _attention_map(f: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: the L2-normalised spatial map of mean squared activations."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


@register("attention", taps=("hidden", "query", "key", "value"))
def attention_transfer(
    x: LossInputs,
    mapping: list[int] | None = None,
    maps: float = 1.0,
    values: float = 1.0,
    relation_heads: int | None = None,
) -> torch.Tensor:
    """Transformers: TinyBERT attention-map MSE (weight `maps`) + MiniLM value-relation KL
    (weight `values`) per mapped layer; CNNs: attention transfer on each stage's feature map."""
    if any(k.startswith("query") for k in x.student_features):
        pairs = layer_pairs(x, "query", mapping)
        return _transformer_attention(x, pairs, maps, values, relation_heads)
    pairs = layer_pairs(x, "hidden", mapping)
    if not pairs or x.student_features["hidden0"].dim() != 4:
        raise UserError(
            "the attention loss reads BERT-style query/key/value layers or a CNN's feature maps, "
            "and this model has neither",
            field="distill.losses",
            fix="remove the attention loss (hidden matches the layers' outputs)",
        )
    total = x.student_logits.new_zeros(())
    for i, j in pairs:
        s, t = x.student_features[f"hidden{i}"], x.teacher_features[f"hidden{j}"]
        if s.shape[-2:] != t.shape[-2:]:
            size = min(s.shape[-2:], t.shape[-2:])
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        total = total + (_attention_map(s) - _attention_map(t)).pow(2).sum(1).mean()
    return total / len(pairs)


def _row_features(f: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One vector per row: a token feature (B×L×F, as `mask`) averaged over its attended
    positions, anything else flattened."""
    if mask is None or f.dim() != 3 or f.shape[:2] != mask.shape:
        return f.flatten(1)
    m = mask.to(f.dtype)[:, :, None]
    return (f * m).sum(1) / m.sum(1).clamp_min(1)


NO_HEAD = "the loss reads the features entering a classifier head, and this model has none"
NO_HEAD_FIX = "give the relation and embedding losses params: {on: output}"
NEEDS_LABELS = ("ce",)  # losses that train on the rows' labels, which a sentence encoder's lack


def check_losses(cfg: KdcConfig) -> None:
    """Refuse, before any work, a loss of `distill.losses` given a parameter it does not take,
    or reading what a sentence encoder's rows and model lack: labels, a classifier head."""
    for i, loss in enumerate(cfg.distill.losses or []):
        at = f"distill.losses[{i}]"
        takes = loss_params(loss.name)
        if unknown := sorted(set(loss.params) - set(takes)):
            raise UserError(
                f"loss '{loss.name}' takes no parameter {', '.join(map(repr, unknown))}",
                source=cfg.source_file,
                field=f"{at}.params",
                fix=f"use {', '.join(takes)}" if takes else "remove params",
            )
        if cfg.task != "sentence-embedding":
            continue
        if loss.name in NEEDS_LABELS:
            raise UserError(
                f"the {loss.name} loss trains on labels, and a sentence-embedding task's rows "
                "have none",
                source=cfg.source_file,
                field=at,
                fix="remove it; the embedding and relation losses train a sentence encoder",
            )
        if loss.params.get("on", "output") != "output":
            raise UserError(
                f"{NO_HEAD} (a sentence encoder)",
                source=cfg.source_file,
                field=f"{at}.params.on",
                fix=NO_HEAD_FIX,
            )


def _pooled(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = x.student_features.get("pooled"), x.teacher_features.get("pooled")
    if s is None or t is None:
        raise UserError(NO_HEAD, field="distill.losses", fix=NO_HEAD_FIX)
    return _row_features(s, x.mask), _row_features(t, x.mask)


def _distances(f: torch.Tensor) -> torch.Tensor:
    """Pairwise distances over their mean positive one (as they are when none is positive: one
    row, or rows all alike, whose empty mean would make the loss NaN)."""
    d = torch.cdist(f, f)
    positive = d[d > 0]
    return d / positive.mean().clamp_min(1e-8) if positive.numel() else d


def _angles(f: torch.Tensor) -> torch.Tensor:
    e = F.normalize(f[None, :, :] - f[:, None, :], dim=2)
    return torch.bmm(e, e.transpose(1, 2)).flatten()


@register("relation", taps=("pooled",))
def relation_kd(
    x: LossInputs, distance: float = 1.0, angle: float = 2.0, on: str = "pooled"
) -> torch.Tensor:
    """RKD (Park et al.): smooth-L1 between student and teacher pairwise distances (normalised by
    their mean) and triplet angles of the pooled features (`on: output`: of the model outputs,
    for sentence-embedding models); width-agnostic."""
    s, t = (x.student_logits, x.teacher_logits) if on == "output" else _pooled(x)
    loss = x.student_logits.new_zeros(())
    if distance:
        loss = loss + distance * F.smooth_l1_loss(_distances(s), _distances(t))
    if angle:
        loss = loss + angle * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss


@register("embedding", taps=("pooled",))
def embedding_match(
    x: LossInputs, cosine: float = 1.0, mse: float = 1.0, on: str = "pooled"
) -> torch.Tensor:
    """Match the teacher embedding (`on`: pooled features, or the model `output` itself for
    sentence-embedding models): (1 − cos) + MSE after a projection to the teacher's width."""
    s, t = (x.student_logits, x.teacher_logits) if on == "output" else _pooled(x)
    s = x.to_teacher_width(f"embedding_{on}", s, t)
    return cosine * (1 - F.cosine_similarity(s, t, dim=-1)).mean() + mse * F.mse_loss(s, t)
