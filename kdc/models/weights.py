"""Safe weight loading: safetensors preferred, `torch.load(weights_only=True)` otherwise."""

from __future__ import annotations

from pathlib import Path

import torch

from kdc.errors import UserError


def load_state_dict(path: Path, field: str = "teacher.weights") -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch file; never unpickles arbitrary objects."""
    if not path.is_file():
        raise UserError(
            "weights file not found",
            source=str(path),
            field=field,
            fix="check the path (relative to the config file)",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many different types
        raise UserError(
            f"cannot read weights ({type(e).__name__})",
            source=str(path),
            field=field,
            fix="re-save the weights with safetensors",
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            "file does not hold a state dict of tensors",
            source=str(path),
            field=field,
            fix="save model.state_dict() with safetensors",
        )
    return obj


def load_into(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    field: str = "teacher.weights",
) -> None:
    """Load weights strictly; a mismatch is a user error naming the first bad tensor."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise UserError(
            f"weights do not match the model: {first[:200]}",
            source=source,
            field=field,
            fix="use the weights saved from this architecture",
        ) from None
