"""Structured pruning with torch-pruning's DepGraph, on a gradual schedule during distillation.

Transformers lose whole attention heads (head size kept, so attention kernels keep their shapes)
and FFN neurons, and optionally hidden channels; CNNs lose conv channels. Widths are rounded to
`round_to` (the target's channel divisor). The ratio is given, or found for a latency target.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from kdc.compress.hooks import self_attention
from kdc.config import PruneConfig
from kdc.errors import UserError
from kdc.models.base import ModelAdapter

IMPORTANCE: dict[str, Callable[[], Any]] = {
    "magnitude": lambda: __import__("torch_pruning").importance.MagnitudeImportance(p=2),
    "taylor": lambda: __import__("torch_pruning").importance.TaylorImportance(),
}


def remaining_ratio(ratio: float, done: int, steps: int) -> float:
    """The ratio that, applied to a model already pruned `done` of `steps` increments towards
    `ratio`, reaches `ratio` of the original."""
    kept_now = 1 - ratio * done / steps
    return 1 - (1 - ratio) / kept_now


def head_schedule(heads: int, ratio: float, steps: int) -> list[float]:
    """Per-step head ratios for torch-pruning (indexed by step, 0 unused) that remove whole heads
    in even increments down to round(heads·(1−ratio)) (at least 1). torch-pruning removes
    ceil(r·current) heads per step; r = (n − ½)/current makes that exactly n."""
    targets = [max(1, round(heads * (1 - ratio * k / steps))) for k in range(steps + 1)]
    return [0.0] + [
        (targets[k - 1] - targets[k] - 0.5) / targets[k - 1] if targets[k] < targets[k - 1] else 0.0
        for k in range(1, steps + 1)
    ]


# how a transformer student is pruned, in distill's input hash from 2 on (`distill_versions`):
# 2, its whole classification head left unpruned (ELECTRA's and RoBERTa's dense layer too);
# 3, its config.json states the heads each layer lost (`pruned_heads`), the hidden size pruned
# too the ones it removed
TRANSFORMER_VERSION = 3


def _transformer_args(
    adapter: ModelAdapter, head_ratio: float, hidden_ratio: float, steps: int
) -> dict[str, Any]:
    from kdc.models.hf import hidden_size, layer_list

    model = adapter.model  # type: ignore[attr-defined]
    blocks = list(layer_list(model))
    attns = [self_attention(b) for b in blocks]
    if any(a is None for a in attns):
        raise UserError(
            "structured pruning supports BERT-style attention (query/key/value layers) only",
            field="prune.enabled",
            fix="set prune.enabled: false",
        )
    width = hidden_size(model)
    qkv = {lin: a for a in attns for lin in (a.query, a.key, a.value)}
    residual = [
        m
        for b in blocks
        for m in b.modules()
        if isinstance(m, nn.Linear) and m not in qkv and m.out_features == width
    ]
    pooler = getattr(model.base_model, "pooler", None)
    # the whole head: ELECTRA's and RoBERTa's are dense → tanh → out_proj, no config states a
    # pruned dense, and a config that cannot state the student stays unpruned (sync_config)
    encoder = set(model.base_model.modules())  # all of a bare encoder's (sentence-embedding)
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in encoder]
    poolers = [pooler] if isinstance(pooler, nn.Module) else []
    ignored = list(dict.fromkeys([*adapter.classifiers(), *head, *poolers]))
    embeddings = getattr(model.base_model, "embeddings", None)
    return {
        "num_heads": {lin: a.num_attention_heads for lin, a in qkv.items()},
        "prune_num_heads": head_ratio > 0,
        "prune_head_dims": False,
        "head_pruning_ratio": head_ratio,
        "ignored_layers": ignored + ([] if hidden_ratio > 0 else residual),
        "pruning_ratio_dict": {tuple(residual): hidden_ratio} if hidden_ratio > 0 else None,
        "_head_lists": {
            lin: head_schedule(a.num_attention_heads, head_ratio, steps) for lin, a in qkv.items()
        },
        # a vision transformer's [CLS] (and DeiT's distillation) token and position embeddings:
        # bare parameters whose last axis is the residual stream (torch-pruning reads (parameter,
        # dim) pairs, not the dict its docstring names)
        "unwrapped_parameters": [
            (p, p.dim() - 1)
            for p in (embeddings.parameters(recurse=False) if embeddings is not None else ())
        ]
        or None,
    }


def _cnn_args(
    adapter: ModelAdapter, head_ratio: float, hidden_ratio: float, steps: int
) -> dict[str, Any]:
    return {"ignored_layers": adapter.classifiers()}


PRUNER_ARGS: dict[str, Callable[..., dict[str, Any]]] = {
    "transformer": _transformer_args,
    "cnn": _cnn_args,
}


def sync_after_pruning(adapter: ModelAdapter) -> None:
    """Make layer attributes agree with pruned weights (attention head counts), and a
    transformer's config state its pruned sizes where it can (`sync_config`)."""
    if adapter.family == "transformer":
        from kdc.models.hf import sync_attention_heads
        from kdc.models.pruned_config import sync_config

        sync_attention_heads(adapter.model)  # type: ignore[attr-defined]
        sync_config(adapter.model)  # type: ignore[attr-defined]


def prune_step(pruner: Any, adapter: ModelAdapter) -> None:
    """One `pruner` step, each transformer layer's removed heads recorded on its self-attention
    (`record_pruned_heads`), where transformers can prune the family's heads: its config states
    them as `pruned_heads` (`sync_config`)."""
    import torch_pruning as tp

    queries: dict[nn.Module, tuple[int, nn.Module]] = {}
    model = getattr(adapter, "model", None)
    if adapter.family == "transformer" and hasattr(model.base_model, "_prune_heads"):
        from kdc.models.hf import layer_list
        from kdc.models.pruned_config import record_pruned_heads

        atts = [self_attention(b) for b in layer_list(model)]  # (others: no config states heads)
        queries = {a.query: (i, a) for i, a in enumerate(atts) if a}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            layer, att = queries.get(dep.target.module, (None, None))
            if att is not None and dep.handler == tp.prune_linear_out_channels:
                d = att.attention_head_size
                removed = sorted({i // d for i in idxs})
                live = dep.target.module.out_features // d
                record_pruned_heads(model.config, layer, att, removed, live)
        group.prune()
    sync_after_pruning(adapter)


def make_pruner(
    adapter: ModelAdapter,
    example: dict[str, np.ndarray],
    cfg: PruneConfig,
    *,
    ratio: float,
    steps: int,
    round_to: int | None,
    done: int = 0,
) -> Any:
    """A torch-pruning MetaPruner that, in `steps - done` calls of `.step()`, takes the model
    from `done` of `steps` increments to the full `ratio` (heads: `cfg.head_ratio`, default
    `ratio`; hidden channels: `cfg.hidden_ratio`)."""
    import torch_pruning as tp

    rest = steps - done
    rel = {
        k: remaining_ratio(r, done, steps)
        for k, r in (
            ("ratio", ratio),
            ("head", cfg.head_ratio if cfg.head_ratio is not None else ratio),
            ("hidden", cfg.hidden_ratio),
        )
    }
    args = PRUNER_ARGS[adapter.family](adapter, rel["head"], rel["hidden"], rest)
    head_lists = args.pop("_head_lists", {})
    example_t = {k: torch.from_numpy(v[:2]) for k, v in example.items()}
    pruner = tp.pruner.MetaPruner(
        adapter.module,
        example_t,
        importance=IMPORTANCE[cfg.importance](),
        pruning_ratio=rel["ratio"],
        iterative_steps=rest,
        round_to=round_to,
        **args,
    )
    # torch-pruning removes ceil(r·current) heads per step; exact per-step lists keep the
    # schedule even (see head_schedule)
    pruner.head_pruning_ratio_dict = dict(head_lists)
    return pruner


class GradualPruning:
    """Prune in `cfg.steps` equal increments at evenly spaced training steps over the first
    `span` steps (the rest of training fine-tunes); `start(span, done)` resumes a partial
    schedule on a model already pruned `done` increments."""

    def __init__(
        self,
        adapter: ModelAdapter,
        example: dict[str, np.ndarray],
        cfg: PruneConfig,
        *,
        ratio: float,
        round_to: int | None,
    ) -> None:
        self.adapter, self.example, self.cfg = adapter, example, cfg
        self.ratio, self.round_to = ratio, round_to
        self.steps, self.done = cfg.steps, 0
        self.at: list[int] = [0] * cfg.steps
        self._pruner: Any = None

    def start(self, span: int, done: int = 0) -> None:
        self.at = [math.floor(k * span / self.steps) for k in range(self.steps)]
        self.done, self._pruner = done, None

    @property
    def finished(self) -> bool:
        return self.done >= self.steps

    def due(self, step: int) -> bool:
        return not self.finished and step >= self.at[self.done]

    def step(self) -> None:
        """One increment (Taylor importance reads the gradients of the last backward)."""
        if self._pruner is None:
            self._pruner = make_pruner(
                self.adapter,
                self.example,
                self.cfg,
                ratio=self.ratio,
                steps=self.steps,
                round_to=self.round_to,
                done=self.done,
            )
        prune_step(self._pruner, self.adapter)
        self.done += 1


def prune_once(
    adapter: ModelAdapter,
    example: dict[str, np.ndarray],
    cfg: PruneConfig,
    *,
    ratio: float,
    round_to: int | None,
) -> ModelAdapter:
    """A pruned copy of `adapter` (one shot, magnitude importance)."""
    pruned = copy.deepcopy(adapter)
    once = cfg.model_copy(update={"importance": "magnitude", "steps": 1})
    prune_step(make_pruner(pruned, example, once, ratio=ratio, steps=1, round_to=round_to), pruned)
    return pruned


def ratio_for_latency(
    adapter: ModelAdapter,
    example: dict[str, np.ndarray],
    cfg: PruneConfig,
    *,
    target_ms: float,
    latency_ms: Callable[[ModelAdapter], float],
    round_to: int | None,
    iterations: int = 6,
) -> tuple[float, float]:
    """The smallest ratio (≤ cfg.ratio) whose pruned model's predicted latency meets
    `target_ms`, by bisection; (cfg.ratio, its latency) when even that misses."""

    def at(r: float) -> float:
        return latency_ms(
            prune_once(adapter, example, cfg, ratio=r, round_to=round_to) if r > 0 else adapter
        )

    hi, lat_hi = cfg.ratio, at(cfg.ratio)
    lo, lat_lo = 0.0, at(0.0)
    if lat_lo <= target_ms or lat_hi > target_ms:
        return (0.0, lat_lo) if lat_lo <= target_ms else (hi, lat_hi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lat = at(mid)
        if lat <= target_ms:
            hi, lat_hi = mid, lat
        else:
            lo = mid
    return round(hi, 4), lat_hi
