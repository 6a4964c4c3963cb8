"""Safe weight loading: safetensors preferred, `torch.load(weights_only=True)` otherwise."""

from __future__ import annotations

from pathlib import Path

import torch

from kdc.errors import UserError, listed

# BatchNorm's step counter: load_state_dict fills it in where a checkpoint lacks it (only
# momentum=None reads it), so a weights file without it loads
OPTIONAL_BUFFERS = ("num_batches_tracked",)


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
        pickled = "Unsupported global" in str(e)  # weights_only refused an object: a whole model?
        raise UserError(
            "holds pickled Python objects (a model saved whole, torch.save(model)?), which kdc "
            "does not unpickle"
            if pickled
            else f"cannot read weights ({type(e).__name__})",
            source=str(path),
            field=field,
            fix="save the weights alone: safetensors.torch.save_file(model.state_dict(), PATH)"
            if pickled
            else "re-save the weights with safetensors",
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


def key_mismatch(missing: list[str], unexpected: list[str]) -> str:
    """'missing a, b, c … and 2 more; unexpected d' for a one-line error, '' if both are empty."""
    pairs = (("missing", missing), ("unexpected", unexpected))
    return "; ".join(f"{what} {listed(keys, 3)}" for what, keys in pairs if keys)


def load_into(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    field: str = "teacher.weights",
) -> None:
    """Load weights strictly (but for `OPTIONAL_BUFFERS`); a mismatch is a user error naming
    the first tensors missing and unexpected, or the first of another size."""
    try:
        loaded = module.load_state_dict(state, strict=False)
        missing = [k for k in loaded.missing_keys if not k.endswith(OPTIONAL_BUFFERS)]
        differ = key_mismatch(missing, loaded.unexpected_keys)
    except RuntimeError as e:  # a size mismatch
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        differ = first[:200]
    if differ:
        raise UserError(
            f"weights do not match the model: {differ}",
            source=source,
            field=field,
            fix="use the weights saved from this architecture",
        )


def safetensors_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor name → shape from a safetensors file's header (no tensor read); None if the file
    cannot be read as one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception:  # a damaged file raises several types
        return None


def weight_shapes(path: Path, field: str = "teacher.weights") -> dict[str, list[int]]:
    """Tensor name → shape of a weights file; safetensors from its header alone (a file that is
    not readable is `load_state_dict`'s error)."""
    shapes = safetensors_shapes(path) if path.suffix == ".safetensors" else None
    if shapes is not None:
        return shapes
    return {k: list(v.shape) for k, v in load_state_dict(path, field).items()}


def shape_mismatch(model: dict[str, list[int]], weights: dict[str, list[int]]) -> str:
    """The first difference between a model's state-dict shapes and a file's (missing,
    unexpected or differently sized tensor), or ''."""
    for name, shape in model.items():
        if name not in weights and not name.endswith(OPTIONAL_BUFFERS):
            return f"missing {name!r} ({len(model)} tensors in the model, {len(weights)} in file)"
        if name in weights and weights[name] != shape:
            return f"size mismatch for {name!r}: {weights[name]} in the file, {shape} in the model"
    extra = [k for k in weights if k not in model]
    return f"unexpected {extra[0]!r} in the file ({len(extra)} the model lacks)" if extra else ""
