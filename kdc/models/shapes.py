"""Rebuild a structurally pruned model from its base architecture and a record of tensor shapes.

Pruned weights are saved as safetensors plus `shapes.json` (tensor name → shape); loading
builds the unpruned architecture, shrinks every tensor and layer attribute to the saved shapes,
then loads the weights. No pickle is involved.
"""

from __future__ import annotations

import torch
from torch import nn


def tensor_shapes(module: nn.Module) -> dict[str, list[int]]:
    """Shapes of every parameter and buffer, by state-dict name."""
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _set_attrs(mod: nn.Module) -> None:
    """Make a layer's size attributes agree with its (already resized) weight."""
    w = getattr(mod, "weight", None)
    if isinstance(mod, nn.modules.conv._ConvNd) and w is not None:
        if mod.groups > 1 and mod.groups == mod.out_channels:
            # depthwise (torch-pruning's test): pruning keeps one group per channel
            mod.groups = w.shape[0]
        mod.out_channels = w.shape[0]
        mod.in_channels = w.shape[1] * mod.groups
    elif isinstance(mod, nn.Linear) and w is not None:
        mod.out_features, mod.in_features = w.shape
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        mod.num_features = (
            mod.running_mean.shape[0] if mod.running_mean is not None else (w.shape[0])
        )
    elif isinstance(mod, nn.LayerNorm) and w is not None:
        mod.normalized_shape = tuple(w.shape)
    elif isinstance(mod, nn.GroupNorm) and w is not None:
        mod.num_channels = w.shape[0]
    elif isinstance(mod, nn.Embedding) and w is not None:
        mod.num_embeddings, mod.embedding_dim = w.shape


def apply_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Resize parameters/buffers of `model` in place to `shapes` (values are left uninitialised
    zeros, on the device of the tensor each replaces: load the real weights afterwards)."""
    owners = dict(model.named_modules())
    for name, shape in shapes.items():
        mod_name, _, attr = name.rpartition(".")
        mod = owners.get(mod_name)
        if mod is None:
            continue
        cur = getattr(mod, attr, None)
        if not isinstance(cur, torch.Tensor) or list(cur.shape) == list(shape):
            continue
        new = torch.zeros(shape, dtype=cur.dtype, device=cur.device)
        if isinstance(cur, nn.Parameter):
            setattr(mod, attr, nn.Parameter(new, requires_grad=cur.requires_grad))
        else:
            mod._buffers[attr] = new
    for mod in model.modules():
        _set_attrs(mod)
    return model
