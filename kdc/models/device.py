"""Where a model's tensors live. Distillation trains on the accelerator's device (the first CUDA
GPU where PyTorch sees one, `kdc.compress.distill.make_accelerator`) and hands its models back on
the CPU; everything that runs a module feeds it on the module's own device and reads its outputs
back on the host. On the CPU every move is a no-op: a tensor already on its device is returned
itself, not copied."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")
CPU = torch.device("cpu")


def module_device(module: nn.Module) -> torch.device:
    """The device of `module`'s first parameter (the CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device


def on_device(obj: T, device: torch.device | str, *, copy: bool = False) -> T:
    """`obj` (a tensor, or a dict, tuple or list of them, nested) with every tensor on `device`;
    other values (None, arrays, numbers) as they are. A tensor already on `device` is returned
    itself unless `copy`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, copy=copy)  # type: ignore[return-value]
    if isinstance(obj, dict):
        return {k: on_device(v, device, copy=copy) for k, v in obj.items()}  # type: ignore[return-value]
    if isinstance(obj, tuple | list):
        return type(obj)(on_device(v, device, copy=copy) for v in obj)  # type: ignore[return-value]
    return obj
