"""Sentence-embedding encoders: a Hugging Face encoder (AutoModel) with pooling (mean, cls, max)
and optional L2 normalisation inside the module, so exported graphs output the stored embedding.
Pooling comes from a sentence-transformers directory (modules.json, 1_Pooling/config.json,
Normalize) or from `teacher.pooling`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from kdc.errors import UserError
from kdc.models.base import ModelAdapter
from kdc.models.hf import LAYER_COUNT_KEYS, layer_list, sync_attention_heads
from kdc.models.shapes import apply_shapes, tensor_shapes
from kdc.rundir import atomic_dir, write_json

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


def read_pooling(path: Path, override: str | None = None) -> tuple[str, bool]:
    """(pooling, normalize) of a model directory: `override` wins; else a sentence-transformers
    modules.json (Pooling module config, Normalize module); else mean pooling, no normalisation."""
    modules_file = path / "modules.json"
    pooling, normalize = None, False
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text())
            types = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
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


class SentenceAdapter(ModelAdapter):
    """A sentence encoder with its tokenizer; inputs `input_ids`, `attention_mask`; output the
    embedding (ONNX output name `embedding`)."""

    family = "transformer"
    input_names = ["input_ids", "attention_mask"]
    output_name = "embedding"

    def __init__(
        self, model: nn.Module, tokenizer: Any, max_length: int, pooling: str, normalize: bool
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
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if not (path / "config.json").is_file():
            raise UserError(
                "not a Hugging Face model directory (no config.json)",
                source=str(path),
                field="teacher.path",
                fix="point to a directory saved with save_pretrained",
            )
        found_pooling, found_norm = read_pooling(path, pooling)
        kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        shapes = path / "shapes.json"
        try:
            tok = AutoTokenizer.from_pretrained(str(path), **kw)
            if shapes.is_file():  # a (possibly pruned) kdc student: rebuild shapes, then load
                from safetensors.torch import load_file

                model = AutoModel.from_config(
                    AutoConfig.from_pretrained(str(path), **kw), trust_remote_code=trust_remote_code
                )
                apply_shapes(model, json.loads(shapes.read_text()))
                sync_attention_heads(model)
                model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
            else:
                model = AutoModel.from_pretrained(str(path), **kw)
        except (OSError, ValueError, SafetensorError) as e:
            raise UserError(
                f"cannot load model: {str(e).splitlines()[0][:200]}",
                source=str(path),
                field="teacher.path",
                fix="check the directory has weights, config and tokenizer",
            ) from None
        norm = found_norm if normalize is None else normalize
        return cls(model.eval(), tok, max_length, found_pooling, norm)

    @classmethod
    def load(cls, directory: Path, meta: dict) -> SentenceAdapter:
        """A student saved by `save` (its kdc_model.json is `meta`)."""
        return cls.from_dir(
            directory,
            max_length=meta["max_length"],
            pooling=meta["pooling"],
            normalize=meta["normalize"],
        )

    def encode(self, features: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            list(features),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return {k: enc[k].astype(np.int64) for k in self.input_names}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            self.output_name: {0: "batch"},
        }

    @property
    def config(self) -> Any:
        return self.model.config

    def architecture(self) -> dict[str, Any]:
        c = self.config
        layers = layer_list(self.model)
        heads = [
            m.num_attention_heads
            for m in layers[0].modules()
            if isinstance(getattr(m, "query", None), nn.Linear)
            and isinstance(getattr(m, "num_attention_heads", None), int)
        ]
        ffn = getattr(getattr(layers[0], "intermediate", None), "dense", None)
        return {
            "adapter": "sentence",
            "family": "transformer",
            "model_type": c.model_type,
            "num_hidden_layers": len(layers),
            "hidden_size": self.model.get_input_embeddings().weight.shape[1],
            "num_attention_heads": heads[0] if heads else c.num_attention_heads,
            "intermediate_size": ffn.out_features
            if isinstance(ffn, nn.Linear)
            else getattr(c, "intermediate_size", None),
            "vocab_size": c.vocab_size,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "params": self.params(),
        }

    def _like(self, model: nn.Module) -> SentenceAdapter:
        return SentenceAdapter(
            model.eval(), self.tokenizer, self.max_length, self.pooling, self.normalize
        )

    def select_layers(self, keep: list[int]) -> SentenceAdapter:
        """A copy keeping only the teacher layers `keep` (in order), weights included."""
        model = copy.deepcopy(self.model)
        blocks = layer_list(model)
        kept = nn.ModuleList([blocks[i] for i in keep])
        for name, mod in model.named_modules():
            if mod is blocks:
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                setattr(parent, name.rpartition(".")[2], kept)
        for k in LAYER_COUNT_KEYS:
            if hasattr(model.config, k):
                setattr(model.config, k, len(keep))
        return self._like(model)

    def sliced(self, spec: dict[str, Any]) -> SentenceAdapter:
        """A smaller encoder sliced from the teacher (see `HFTextAdapter.sliced`)."""
        from kdc.models.hf import HFTextAdapter

        return self._like(
            HFTextAdapter(self.model, self.tokenizer, self.max_length).sliced(spec).model
        )

    def feature_modules(self) -> dict[str, nn.Module]:
        return {f"layer{i}": b for i, b in enumerate(layer_list(self.model))}

    def save(self, directory: Path) -> list[Path]:
        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
            write_json(tmp / "shapes.json", tensor_shapes(self.model))
            write_json(
                tmp / "kdc_model.json",
                {
                    "adapter": "sentence",
                    "pooling": self.pooling,
                    "normalize": self.normalize,
                    "max_length": self.max_length,
                    "architecture": self.architecture(),
                },
            )
        return sorted(p for p in directory.rglob("*") if p.is_file())
