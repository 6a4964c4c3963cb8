"""Sentence-embedding encoders: a Hugging Face encoder (AutoModel) with pooling (mean, cls, max)
and optional L2 normalisation inside the module, so exported graphs output the stored embedding.
Pooling comes from a sentence-transformers directory (modules.json, 1_Pooling/config.json,
Normalize) or from `teacher.pooling`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdc.errors import UserError
from kdc.models.hf import TextTransformerAdapter, load_pretrained

POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def _mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _cls(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return h[:, 0]


def _max(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return h.masked_fill(mask.unsqueeze(-1) == 0, -1e9).max(1).values


POOLINGS = {"mean": _mean, "cls": _cls, "max": _max}


class PooledEncoder(nn.Module):
    """`forward(input_ids, attention_mask)` → the pooled (and optionally L2-normalised) B×D
    embedding of the encoder's last hidden state."""

    def __init__(self, model: nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = POOLINGS[self.pooling](h, attention_mask)
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb


def _saved_settings(path: Path) -> tuple[str, bool] | None:
    """(pooling, normalize) from a kdc sentence student's kdc_model.json, None for any other."""
    try:
        meta = json.loads((path / "kdc_model.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("pooling") not in POOLING_KEYS.values():
        return None
    return meta["pooling"], bool(meta.get("normalize"))


def read_pooling(path: Path, override: str | None = None) -> tuple[str, bool]:
    """(pooling, normalize) of a model directory: `override` wins; else a sentence-transformers
    modules.json (Pooling module config, Normalize module; any other module after the encoder,
    a Dense one, is a UserError), or the kdc_model.json of a sentence student kdc saved; else
    mean pooling, no normalisation."""
    modules_file = path / "modules.json"
    pooling, normalize = None, False
    saved = _saved_settings(path)
    if saved:  # a kdc student compressed again: its own pooling and normalisation
        pooling, normalize = saved
    elif modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text())
            types = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
            after = [m["type"].rsplit(".", 1)[-1] for m in modules[1:]]  # after the encoder
            extra = [t for t in after if t not in ("Pooling", "Normalize")]
            if extra:  # a Dense projection (LaBSE, distiluse …) changes the embedding
                raise UserError(
                    f"sentence-transformers module {extra[0]} is not supported: the embedding "
                    "would be computed without it",
                    source=str(modules_file),
                    field="teacher.path",
                    fix="use an encoder whose modules are Transformer, Pooling and Normalize",
                )
            normalize = "Normalize" in types
            if "Pooling" in types:
                conf = json.loads((path / types["Pooling"] / "config.json").read_text())
                modes = [name for key, name in POOLING_KEYS.items() if conf.get(key)]
                others = [
                    k
                    for k, v in conf.items()
                    if k.startswith("pooling_mode") and v and k not in POOLING_KEYS
                ]
                if others or len(modes) != 1:
                    raise UserError(
                        f"unsupported pooling {others or modes or 'none'}",
                        source=str(path / types["Pooling"]),
                        field="teacher.pooling",
                        fix="set teacher.pooling to mean, cls or max",
                    )
                pooling = modes[0]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(
                "cannot read the sentence-transformers modules",
                source=str(path),
                field="teacher.pooling",
                fix="check modules.json and 1_Pooling/config.json, or set teacher.pooling",
            ) from None
    return override or pooling or "mean", normalize


def read_lower_case(path: Path) -> bool:
    """Whether texts are lower-cased before tokenizing: `do_lower_case` of a kdc sentence
    student's kdc_model.json, else of a sentence-transformers sentence_bert_config.json (its
    Transformer module lowers the texts itself, whatever the tokenizer does); else False."""
    for name in ("kdc_model.json", "sentence_bert_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            conf = json.loads(file.read_text())
        except (OSError, ValueError):
            conf = None
        lower = conf.get("do_lower_case", False) if isinstance(conf, dict) else None
        if not isinstance(lower, bool):
            raise UserError(
                "cannot read do_lower_case",
                source=str(file),
                field="teacher.path",
                fix='make it a JSON object whose "do_lower_case" is true or false',
            )
        return lower
    return False


class SentenceAdapter(TextTransformerAdapter):
    """A sentence encoder with its tokenizer; output the embedding (ONNX output name
    `embedding`). With `lower_case` texts are lower-cased before tokenizing."""

    adapter_name = "sentence"
    output_name = "embedding"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_length: int,
        pooling: str,
        normalize: bool,
        lower_case: bool = False,
    ) -> None:
        if pooling not in POOLINGS:
            raise UserError(
                f"unknown pooling '{pooling}'",
                field="teacher.pooling",
                fix=f"use one of {', '.join(POOLINGS)}",
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling
        self.normalize = normalize
        self.lower_case = lower_case
        self.module = PooledEncoder(model, pooling, normalize)

    @classmethod
    def from_dir(
        cls,
        path: Path,
        *,
        max_length: int,
        pooling: str | None = None,
        normalize: bool | None = None,
        trust_remote_code: bool = False,
    ) -> SentenceAdapter:
        """Load an encoder directory (sentence-transformers or plain HF, or a kdc student)."""
        from transformers import AutoModel

        kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        model, tok = load_pretrained(path, AutoModel, kw, trust_remote_code)
        found_pooling, found_norm = read_pooling(path, pooling)
        norm = found_norm if normalize is None else normalize
        return cls(model, tok, max_length, found_pooling, norm, read_lower_case(path))

    @classmethod
    def load(cls, directory: Path, meta: dict) -> SentenceAdapter:
        """A student saved by `save` (its kdc_model.json is `meta`)."""
        return cls.from_dir(
            directory,
            max_length=meta["max_length"],
            pooling=meta["pooling"],
            normalize=meta["normalize"],
        )

    def encode(
        self,
        features: list[str] | list[tuple[str, str]],
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Token inputs (`TextTransformerAdapter.encode`) of the texts, lower-cased first with
        `lower_case`."""
        if self.lower_case:
            features = [
                tuple(t.lower() for t in f) if isinstance(f, tuple) else f.lower() for f in features
            ]
        return super().encode(features, progress)

    def classifiers(self) -> list[nn.Linear]:
        """None: the output is the pooled encoder state (a BERT's unused pooler is no head)."""
        return []

    def _like(self, model: nn.Module) -> SentenceAdapter:
        return SentenceAdapter(
            model, self.tokenizer, self.max_length, self.pooling, self.normalize, self.lower_case
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "do_lower_case": self.lower_case,
        }
