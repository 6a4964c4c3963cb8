"""Forward-hook feature taps: named intermediate tensors captured while a model runs.

Names are shared across families so that losses can be written once:
`embeddings`, `hidden{i}` (transformer block outputs, or CNN stage feature maps),
`query{i}`/`key{i}`/`value{i}` (B×heads×L×d, read with the layer's current head count, so
pruned heads are respected) and `pooled` (the feature the classifier reads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdc.models.base import ModelAdapter


@dataclass(frozen=True)
class Tap:
    """Where a feature comes from: a module's output (first element of a tuple) or its first
    input; `heads_of` is the self-attention whose head count splits B×L×(h·d) into heads;
    `tokens`: the feature holds one vector per token of a text input (B×L×D)."""

    module: nn.Module
    use_input: bool = False
    heads_of: nn.Module | None = None
    tokens: bool = False

    @property
    def seq_axis(self) -> int | None:
        """The token axis of the feature: 2 for attention heads (B×heads×L×d), 1 for token
        features, None otherwise (one vector per row, or a feature map)."""
        return 2 if self.heads_of is not None else 1 if self.tokens else None


class FeatureTaps:
    """Captures the taps' tensors on every forward while attached (a context manager); the last
    call of a module within a forward wins."""

    def __init__(self, taps: dict[str, Tap]) -> None:
        self.taps = taps
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str, tap: Tap) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            v = args[0] if tap.use_input else output
            if isinstance(v, (tuple, list)):
                v = v[0]
            if tap.heads_of is not None:
                b, n, _ = v.shape
                v = v.view(b, n, tap.heads_of.num_attention_heads, -1).transpose(1, 2)
            self.features[name] = v

        return hook

    def attach(self) -> FeatureTaps:
        self.detach()
        self._handles = [
            t.module.register_forward_hook(self._hook(n, t)) for n, t in self.taps.items()
        ]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def take(self) -> dict[str, torch.Tensor]:
        """The features of the last forward, in fp32 (a forward under bfloat16 autocast makes
        bf16 ones; losses compute in fp32); the store is emptied."""
        out, self.features = self.features, {}
        return {k: v.float() for k, v in out.items()}

    def __enter__(self) -> FeatureTaps:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


def _pooled(adapter: ModelAdapter) -> dict[str, Tap]:
    """The input of the (first) classifier as `pooled`: [CLS] for DeiT's two averaged heads."""
    heads = adapter.classifiers()
    return {"pooled": Tap(heads[0], use_input=True)} if heads else {}


def transformer_taps(adapter: ModelAdapter, example: dict[str, np.ndarray]) -> dict[str, Tap]:
    """Embeddings, every block's output, its attention's query/key/value, the pooler output."""
    from kdc.models.hf import block_attention, layer_list

    model = adapter.model  # type: ignore[attr-defined]
    base = model.base_model
    taps: dict[str, Tap] = {}
    if isinstance(getattr(base, "embeddings", None), nn.Module):
        taps["embeddings"] = Tap(base.embeddings, tokens=True)
    for i, block in enumerate(layer_list(model)):
        taps[f"hidden{i}"] = Tap(block, tokens=True)
        attn = block_attention(block)
        if attn is not None:
            for k in ("query", "key", "value"):
                taps[f"{k}{i}"] = Tap(getattr(attn, k), heads_of=attn)
    pooler = getattr(base, "pooler", None)
    if isinstance(pooler, nn.Module) and adapter.classifiers():  # a sentence encoder has no head
        taps["pooled"] = Tap(pooler)
    else:
        taps.update(_pooled(adapter))
    return taps


class NetworkRoot(nn.Module):
    """A plain root holding the user's network as `net`, for a tool that adds modules of its own
    to the model it is given (QAT's root for NNCF, which adds its hook storage of quantizers)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


def network_modules(module: nn.Module) -> list[nn.Module]:
    """The modules of the user's network that `module` runs, its root excepted: under a
    `NetworkRoot`, those of its `net` only (not NNCF's quantizers beside it)."""
    root = module.net if isinstance(module, NetworkRoot) else module
    return [m for n, m in root.named_modules() if n]


def cnn_taps(adapter: ModelAdapter, example: dict[str, np.ndarray]) -> dict[str, Tap]:
    """One feature map per spatial resolution (the last module of the user's network to finish
    at it: a stage's output), and the classifier's input as `pooled`."""
    module = adapter.module
    order: list[tuple[nn.Module, tuple[int, int]]] = []

    def record(mod: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
            order.append((mod, tuple(out.shape[-2:])))

    handles = [m.register_forward_hook(record) for m in network_modules(module)]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(**{k: torch.from_numpy(v[:1]) for k, v in example.items()})
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    last: dict[tuple[int, int], nn.Module] = {}
    for mod, size in order:
        last.pop(size, None)
        last[size] = mod  # re-insert: dict order is the order stages finish
    taps = {f"hidden{i}": Tap(m) for i, m in enumerate(last.values())}
    return {**taps, **_pooled(adapter)}


TAP_FINDERS: dict[str, Callable[[ModelAdapter, dict[str, np.ndarray]], dict[str, Tap]]] = {
    "transformer": transformer_taps,
    "cnn": cnn_taps,
}


def find_taps(
    adapter: ModelAdapter, example: dict[str, np.ndarray], prefixes: tuple[str, ...] | set[str]
) -> dict[str, Tap]:
    """The taps of `adapter` whose names start with one of `prefixes`."""
    taps = TAP_FINDERS[adapter.family](adapter, example)
    return {n: t for n, t in taps.items() if n.startswith(tuple(prefixes))}
