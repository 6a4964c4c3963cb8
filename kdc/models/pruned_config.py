"""A structurally pruned transformer's config stating its pruned sizes, where a Hugging Face
config can: every layer alike, and heads × head size = hidden size (BERT-style attention takes
its head size from hidden_size / num_attention_heads). Saved, the directory then loads with
`from_pretrained`, and as a teacher its students are sliced from its true sizes."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdc.errors import UserError, first_line
from kdc.models.hf import HIDDEN_WIDTH_KEYS, INTERMEDIATE_KEYS, hidden_size, layer_list


def sync_config(model: nn.Module) -> str | None:
    """Set `model.config`'s hidden_size, num_attention_heads and FFN size (and the widths that
    follow the hidden size) to the model's live ones where a config can state them; returns why
    it cannot (None when the config states the model). Only the BERT-style blocks torch-pruning
    cuts are read (kdc prunes no other)."""
    atts = [
        m
        for m in model.modules()
        if isinstance(getattr(m, "query", None), nn.Linear)
        and isinstance(getattr(m, "attention_head_size", None), int)
    ]
    ffns = [getattr(getattr(b, "intermediate", None), "dense", None) for b in layer_list(model)]
    config = model.config
    inter_key = next((k for k in INTERMEDIATE_KEYS if hasattr(config, k)), None)
    if not atts or inter_key is None or not all(isinstance(f, nn.Linear) for f in ffns):
        return None
    hidden = hidden_size(model)
    heads = sorted({m.query.out_features // m.attention_head_size for m in atts})
    inter = sorted({f.out_features for f in ffns})  # type: ignore[union-attr]
    if (hidden, heads, inter) == (
        config.hidden_size,
        [config.num_attention_heads],
        [getattr(config, inter_key)],
    ):
        return None
    if len(heads) > 1 or len(inter) > 1:
        return f"its layers are pruned to different sizes ({heads} heads, {inter} FFN units)"
    sizes = {"hidden_size": hidden, "num_attention_heads": heads[0], inter_key: inter[0]}
    sizes.update(
        {k: hidden for k in HIDDEN_WIDTH_KEYS if getattr(config, k, 0) == config.hidden_size}
    )
    stated = copy.deepcopy(config)
    for k, v in sizes.items():
        setattr(stated, k, v)
    stating = f"a config of its pruned sizes (hidden_size {hidden}, num_attention_heads {heads[0]})"
    try:
        with torch.device("meta"):
            built = type(model)(stated).state_dict()
    except ValueError as e:  # BERT's: "The hidden size (32) is not a multiple of ..."
        return f"{stating} does not build: {first_line(e)}"
    live = model.state_dict()
    shape = lambda state, k: list(state[k].shape) if k in state else "none"  # noqa: E731
    bad = next((k for k in sorted({*live, *built}) if shape(live, k) != shape(built, k)), None)
    if bad is not None:
        return f"{stating} makes {bad} {shape(built, bad)}, not its {shape(live, bad)}"
    for k, v in sizes.items():
        setattr(config, k, v)
    return None


def check_sliceable(model: nn.Module) -> None:
    """A UserError when `model`, a pruned teacher, has sizes its config cannot state: students
    are sliced from a config's sizes. Names the directory it was loaded from."""
    why = sync_config(model)
    if why:
        raise UserError(
            f"cannot slice students from this pruned teacher: {why}",
            source=getattr(model.config, "_name_or_path", "") or None,
            field="teacher.path",
            fix="keep whole layers of it (search.strategy: fixed with student.layers alone), or "
            "use the teacher it was pruned from",
        )
