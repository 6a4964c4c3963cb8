"""A fixed student against a Hugging Face teacher's config.json, before any model is loaded:
`student.layers` within its layers, `student.architecture` within its sizes and, where heads
were pruned from it (`pruned_heads`), within the attention dims each kept layer has left."""

from __future__ import annotations

from kdc.config import KdcConfig
from kdc.errors import UserError
from kdc.hf_files import config_size


def check_student(cfg: KdcConfig, hf: dict | None) -> None:
    """Raise a UserError naming the config file and field for a `student.layers` or
    `student.architecture` the teacher's config.json `hf` (None: not a Hugging Face teacher)
    rules out; other teachers' are checked when the student is built."""
    try:
        _check_layers(cfg, hf)
        _check_architecture(cfg, hf)
    except UserError as e:
        raise e.located(cfg.source_file) from None


def _check_layers(cfg: KdcConfig, hf: dict | None) -> None:
    from kdc.compress.student import kept_layers

    n = config_size(hf or {}, "num_hidden_layers")
    if cfg.student.layers is not None and n is not None:
        kept_layers(n, cfg.student.layers)


def _check_architecture(cfg: KdcConfig, hf: dict | None) -> None:
    """The search space's rule (sizes within the teacher's, hidden size divisible by the heads)
    and, for `search.strategy: fixed`, the search's slicing rule: a student of other sizes than
    the teacher's takes all its heads from those each kept layer has (`check_attention_width`)."""
    from kdc.compress.space import TRANSFORMER_KEYS, transformer_genes
    from kdc.compress.student import evenly_spaced, kept_layers
    from kdc.hf_files import check_pruned_heads
    from kdc.models.pruned_config import check_attention_width, stated_attention_widths

    sizes = [config_size(hf or {}, k) for k in TRANSFORMER_KEYS]
    if not cfg.student.architecture or None in sizes or hf is None:
        return
    n, hidden, heads, inter = sizes
    if hidden % heads:  # not a teacher the search could describe either
        return
    genes = transformer_genes(cfg.student.architecture, n, hidden, heads, inter)
    if cfg.search.strategy != "fixed" or genes["width"] == [hidden, heads]:
        return  # a search's students fit (its space); the teacher's sizes keep its pruned heads
    check_pruned_heads(hf, cfg.resolve(cfg.teacher.path or ""))
    layers = cfg.student.layers  # the search's: these teacher layers, else evenly spaced ones
    keep = (
        kept_layers(n, layers)
        if isinstance(layers, list)
        else evenly_spaced(n, genes["num_hidden_layers"])
    )
    check_attention_width(stated_attention_widths(hf), keep, genes["width"][0])
