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

from kdc.config import PruneConfig
from kdc.errors import UserError
from kdc.models.base import ModelAdapter
from kdc.models.device import module_device, on_device

IMPORTANCE: dict[str, Callable[[], Any]] = {
    "magnitude": lambda: __import__("torch_pruning").importance.MagnitudeImportance(p=2),
    "taylor": lambda: __import__("torch_pruning").importance.TaylorImportance(),
}


def width_target(
    initial: int, ratio: float, k: int, steps: int, round_to: int | None, current: int
) -> int:
    """A layer's width after step `k` of `steps` towards `ratio`, as torch-pruning's iterative
    schedule makes it from its `initial` width: int(initial·(1 − ratio·k/steps)), rounded down to
    a multiple of `round_to`, and `current` where that is no narrower."""
    width = int(initial * (1 - k / float(steps) * ratio))
    if width >= current:
        return current
    return width - width % round_to if round_to else width


def head_target(initial: int, ratio: float, k: int, steps: int) -> int:
    """An attention layer's heads after step `k` of `steps`: whole heads in even increments down
    to round(initial·(1−ratio)), at least 1."""
    return max(1, round(initial * (1 - ratio * k / steps)))


# how a transformer student is pruned, in distill's input hash from 2 on (`distill_versions`):
# 2, its whole classification head left unpruned (ELECTRA's and RoBERTa's dense layer too);
# 3, its config.json states the heads each layer lost (`pruned_heads`), the hidden size pruned
# too the ones it removed
TRANSFORMER_VERSION = 3
# how a CNN student is pruned, from 2 on: 2, each step narrows a layer to kdc's target
# (`width_target`), a grouped conv's channels too (torch-pruning rounded those to `round_to`
# in units of a group's, pruning more)
CNN_VERSION = 2
# the last version that changed a transformer run keeping its hidden size (`prune.hidden_ratio`
# 0): 3 changed only the pruned_heads of one pruning it too (bump both for a change to every run)
HIDDEN_KEPT_VERSION = 2


def version(family: str, hidden_ratio: float = 0.0) -> int:
    """How a student of `family` pruned with `hidden_ratio` is pruned, in distill's input hash
    (`distill_versions`): a transformer keeping its hidden size is not distilled again for a
    version that changed none of its outputs."""
    if family == "cnn":
        return CNN_VERSION
    return TRANSFORMER_VERSION if hidden_ratio else HIDDEN_KEPT_VERSION


def _transformer_layout(adapter: ModelAdapter) -> dict[str, Any]:
    from kdc.models.hf import block_attention, hidden_size, layer_list

    model = adapter.model  # type: ignore[attr-defined]
    blocks = list(layer_list(model))
    attns = [block_attention(b) for b in blocks]
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
    inner = [
        m
        for b in blocks
        for m in b.modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and m not in qkv and m not in residual
    ]
    return {
        "heads": {lin: a.num_attention_heads for lin, a in qkv.items()},
        "widths": {
            **{m: "ratio" for m in inner if m not in ignored},
            **dict.fromkeys(residual, "hidden"),
        },
        "ignored_layers": ignored,
        # a vision transformer's [CLS] (and DeiT's distillation) token and position embeddings:
        # bare parameters whose last axis is the residual stream (torch-pruning reads (parameter,
        # dim) pairs, not the dict its docstring names)
        "unwrapped_parameters": [
            (p, p.dim() - 1)
            for p in (embeddings.parameters(recurse=False) if embeddings is not None else ())
        ]
        or None,
    }


def _cnn_layout(adapter: ModelAdapter) -> dict[str, Any]:
    ignored = adapter.classifiers()
    widths = [m for m in adapter.module.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return {
        "heads": {},
        "widths": {m: "ratio" for m in widths if m not in ignored},
        "ignored_layers": ignored,
    }


# per family: the layers torch-pruning may narrow ("widths": module → which ratio, "ratio" or
# "hidden"), attention layers' head counts ("heads"), and further MetaPruner arguments
LAYOUTS: dict[str, Callable[[ModelAdapter], dict[str, Any]]] = {
    "transformer": _transformer_layout,
    "cnn": _cnn_layout,
}


def _out(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def layer_sizes(adapter: ModelAdapter) -> dict[str, dict[str, int]]:
    """The widths and head counts of the layers pruning narrows, by module name: a gradual
    schedule's step targets are fractions of the sizes before its first step."""
    layout = LAYOUTS[adapter.family](adapter)
    names = {m: n for n, m in adapter.module.named_modules()}
    return {
        "widths": {names[m]: _out(m) for m in layout["widths"]},
        "heads": {names[m]: h for m, h in layout["heads"].items()},
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
        from kdc.models.hf import block_attention, layer_list
        from kdc.models.pruned_config import record_pruned_heads

        # the attentions `head_records` reads the records back from (others: no config states
        # heads)
        atts = [block_attention(b) for b in layer_list(model)]
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


def _step_ratio(current: int, target: int) -> float:
    """The ratio torch-pruning takes a layer of `current` width to `target` with: it keeps
    int(current·(1 − r)), here target + ½ truncated."""
    return 1 - (target + 0.5) / current if target < current else 0.0


def make_pruner(
    adapter: ModelAdapter,
    example: dict[str, np.ndarray],
    cfg: PruneConfig,
    *,
    ratio: float,
    steps: int,
    round_to: int | None,
    done: int = 0,
    initial: dict[str, dict[str, int]] | None = None,
) -> Any:
    """A torch-pruning MetaPruner whose one `.step()` is step `done + 1` of `steps` towards
    `ratio` (heads: `cfg.head_ratio`, default `ratio`; hidden channels: `cfg.hidden_ratio`) for
    layers of `initial` sizes (`layer_sizes`, default the model's): every step's widths and head
    counts are kdc's (`width_target`, `head_target`), so a resumed schedule prunes as an
    uninterrupted one."""
    import torch_pruning as tp

    layout = LAYOUTS[adapter.family](adapter)
    initial = initial or layer_sizes(adapter)
    names = {m: n for n, m in adapter.module.named_modules()}
    ratios = {"ratio": ratio, "hidden": cfg.hidden_ratio}
    head_ratio = cfg.head_ratio if cfg.head_ratio is not None else ratio
    step_ratios = {
        m: _step_ratio(
            _out(m),
            width_target(
                initial["widths"][names[m]], ratios[kind], done + 1, steps, round_to, _out(m)
            ),
        )
        for m, kind in layout["widths"].items()
        if ratios[kind] > 0
    }
    heads = layout.pop("heads")
    for m, now in heads.items():  # torch-pruning removes ceil(r·now) heads, and only in a
        # group it narrows (head dims kept): the same ratio does both
        drop = now - head_target(initial["heads"][names[m]], head_ratio, done + 1, steps)
        step_ratios[m] = (drop - 0.5) / now if drop > 0 else 0.0
    unpruned = [m for m in layout.pop("widths") if m not in step_ratios]
    device = module_device(adapter.module)  # the dependency graph is traced on the example
    return tp.pruner.MetaPruner(
        adapter.module,
        on_device({k: torch.from_numpy(v[:2]) for k, v in example.items()}, device),
        importance=IMPORTANCE[cfg.importance](),
        pruning_ratio=0.0,
        pruning_ratio_dict=step_ratios,
        iterative_steps=1,
        num_heads=heads,
        prune_num_heads=head_ratio > 0,
        prune_head_dims=False,
        head_pruning_ratio_dict={m: step_ratios[m] for m in heads},
        **{**layout, "ignored_layers": layout["ignored_layers"] + unpruned},
    )


class GradualPruning:
    """Prune in `cfg.steps` equal increments at evenly spaced training steps over the first
    `span` steps (the rest of training fine-tunes); `start(span, done, sizes)` resumes a
    partial schedule on a model already pruned `done` increments from the `sizes`
    (`layer_sizes`) its checkpoint holds, those the model had when built otherwise."""

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
        self.sizes = layer_sizes(adapter)  # before its first step

    def start(
        self, span: int, done: int = 0, sizes: dict[str, dict[str, int]] | None = None
    ) -> None:
        self.at = [math.floor(k * span / self.steps) for k in range(self.steps)]
        self.done, self.sizes = done, sizes or self.sizes

    @property
    def finished(self) -> bool:
        return self.done >= self.steps

    def due(self, step: int) -> bool:
        return not self.finished and step >= self.at[self.done]

    def step(self) -> None:
        """One increment (Taylor importance reads the gradients of the last backward)."""
        pruner = make_pruner(
            self.adapter,
            self.example,
            self.cfg,
            ratio=self.ratio,
            steps=self.steps,
            round_to=self.round_to,
            done=self.done,
            initial=self.sizes,
        )
        prune_step(pruner, self.adapter)
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
