"""A structurally pruned transformer's config stating its pruned sizes, where a Hugging Face
config can: hidden_size and the FFN size (every layer alike), and whole heads pruned with the
head size kept as `num_attention_heads` (hidden size / head size) less each layer's
`pruned_heads`, which transformers prunes again when it builds the model (families with
`_prune_heads`: BERT, RoBERTa, ELECTRA, ViT, DeiT …). Saved, the directory then loads with
`from_pretrained`, and as a teacher its students are sliced from its true sizes."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from kdc.errors import UserError, first_line
from kdc.models.hf import (
    HIDDEN_WIDTH_KEYS,
    INTERMEDIATE_KEYS,
    block_attention,
    hidden_size,
    layer_list,
)

# a self-attention's heads kdc pruned, numbered among those its layer had before (`removed_heads`)
REMOVED = "kdc_removed_heads"


def removed_heads(config: Any, layer: int, attention: nn.Module) -> list[int]:
    """The heads `layer` (its self-`attention`) lost, numbered among those it had before kdc
    pruned it: recorded on the attention while pruning (`record_pruned_heads`; a config's
    numbering changes when the hidden size is pruned too), else its config's `pruned_heads`."""
    return getattr(attention, REMOVED, None) or list(config.pruned_heads.get(layer, []))


def _kept(gone: list[int], live: int) -> list[int]:
    """The numbers of a layer's `live` heads, the heads it lost `gone` (the first `live` when
    the two disagree)."""
    kept = [h for h in range(live + len(gone)) if h not in gone]
    return kept if len(kept) == live else list(range(live))


def record_pruned_heads(
    config: Any, layer: int, attention: nn.Module, removed: list[int], live: int
) -> None:
    """Record on `layer`'s self-`attention` the heads `removed` from it, numbered among its `live`
    heads (as torch-pruning numbers them), renumbered as `removed_heads` numbers them."""
    gone = removed_heads(config, layer, attention)
    kept = _kept(gone, live)
    setattr(attention, REMOVED, sorted({*gone, *map(kept.__getitem__, removed)}))


def head_records(model: nn.Module) -> dict[int, list[int]]:
    """Each layer's `removed_heads`, of the layers that lost any (a checkpoint keeps them: its
    weights' shapes tell how many heads each layer lost, not which)."""
    atts = [block_attention(b) for b in layer_list(model)]
    gone = {i: removed_heads(model.config, i, a) for i, a in enumerate(atts) if a is not None}
    return {i: heads for i, heads in gone.items() if heads}


def restore_head_records(model: nn.Module, records: dict[int, list[int]]) -> None:
    """Put `head_records` back on `model`'s self-attentions."""
    for i, block in enumerate(layer_list(model)):
        attention = block_attention(block)
        if attention is not None and records.get(i):
            setattr(attention, REMOVED, list(records[i]))


def _pruned_heads(config: Any, layer: int, attention: nn.Module, live: int, n: int) -> list[int]:
    """The heads `layer` lost as its config's `pruned_heads` states them, among the `n` its
    hidden size holds: its `live` heads keep their numbers (`removed_heads`) where they fit, so
    the heads listed are the lowest-numbered of those it lost (all of them unless the hidden
    size was pruned too). Without a record (a student of an earlier kdc) the last ones, which
    build the same shapes."""
    kept = _kept(removed_heads(config, layer, attention), live)
    return [h for h in range(n) if h not in kept][: n - live]


def _stated_sizes(model: nn.Module) -> dict[str, Any] | str | None:
    """The config values that state `model`'s live sizes, why none can (str), or None when it
    has no BERT-style blocks (kdc prunes no other)."""
    atts = [block_attention(b) for b in layer_list(model)]
    ffns = [getattr(getattr(b, "intermediate", None), "dense", None) for b in layer_list(model)]
    config = model.config
    inter_key = next((k for k in INTERMEDIATE_KEYS if hasattr(config, k)), None)
    if not all(atts) or inter_key is None or not all(isinstance(f, nn.Linear) for f in ffns):
        return None
    hidden, d = hidden_size(model), atts[0].attention_head_size  # type: ignore[union-attr]
    live = [a.query.out_features // d for a in atts]  # type: ignore[union-attr]
    inter = sorted({f.out_features for f in ffns})  # type: ignore[union-attr]
    if len(inter) > 1:
        return f"its layers are pruned to different FFN sizes ({inter})"
    n = hidden // d
    if hidden % d or max(live) > n:
        return f"its {max(live)} heads of {d} dims do not fit its hidden size {hidden}"
    pruned = {i: _pruned_heads(config, i, a, live[i], n) for i, a in enumerate(atts) if live[i] < n}
    if pruned and not hasattr(model.base_model, "_prune_heads"):
        return (
            f"its layers keep {sorted(set(live))} of {n} heads and transformers cannot prune "
            f"{type(model.base_model).__name__}'s heads (it has no _prune_heads)"
        )
    return {
        "hidden_size": hidden,
        "num_attention_heads": n,
        inter_key: inter[0],
        "pruned_heads": pruned,
    }


def sync_config(model: nn.Module) -> str | None:
    """Set `model.config`'s hidden_size, num_attention_heads, pruned_heads and FFN size (and the
    widths that follow the hidden size) to the model's live ones where a config can state them;
    returns why it cannot (None when the config states the model)."""
    sizes = _stated_sizes(model)
    config = model.config
    if not isinstance(sizes, dict):
        return sizes
    if all(getattr(config, k) == v for k, v in sizes.items()):
        return None
    sizes.update(
        {
            k: sizes["hidden_size"]
            for k in HIDDEN_WIDTH_KEYS
            if getattr(config, k, 0) == config.hidden_size
        }
    )
    stated = copy.deepcopy(config)
    for k, v in sizes.items():
        setattr(stated, k, v)
    stating = "a config of its pruned sizes ({})".format(
        ", ".join(f"{k} {sizes[k]}" for k in ("hidden_size", "num_attention_heads"))
    )
    from transformers.integrations.accelerate import init_empty_weights

    try:  # on the meta device: transformers' head pruning computes its indices on the CPU
        with init_empty_weights():
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


def attention_widths(model: nn.Module) -> list[int]:
    """Each layer's live attention width (heads × head size), which pruned heads narrow; empty
    for blocks kdc does not prune."""
    atts = [block_attention(b) for b in layer_list(model)]
    return [a.query.out_features for a in atts] if all(atts) else []  # type: ignore[union-attr]


def stated_attention_widths(conf: dict[str, Any]) -> list[int]:
    """Each layer's attention width a config.json states (a well-formed one, `check_pruned_heads`):
    head size × its heads less those `pruned_heads` prunes from it, as transformers builds it;
    empty without pruned heads."""
    from kdc.hf_files import config_size

    pruned = conf.get("pruned_heads") or {}
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads")
    n, hidden, heads = (config_size(conf, k) for k in keys)
    if not (pruned and n and hidden and heads):
        return []
    return [hidden // heads * (heads - len(pruned.get(str(i), []))) for i in range(n)]


def check_attention_width(widths: list[int], keep: list[int], width: int) -> None:
    """A UserError when a student of teacher layers `keep` with all its heads, `width` attention
    dims wide, needs more than a kept layer has left after its heads were pruned (`widths`: each
    teacher layer's, `attention_widths` or `stated_attention_widths`; empty: none narrowed).
    It names no file: the field is the config's, which the run names (`UserError.located`)."""
    narrow = min((widths[i] for i in keep), default=width) if widths else width
    if width > narrow:
        layer = next(i for i in keep if widths[i] == narrow)
        raise UserError(
            f"a student {width} wide needs {width} attention dims, but teacher layer {layer} "
            f"keeps {narrow} (its heads were pruned)",
            field="student.architecture",
            fix=f"keep the teacher's hidden_size and num_attention_heads (and its pruned heads), "
            f"or a hidden_size of at most {narrow}",
        )
