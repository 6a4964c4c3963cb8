"""Hugging Face transformer classifiers (BERT, RoBERTa, DistilBERT, ELECTRA, …) from a local
model directory."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdc.errors import UserError
from kdc.models.base import ModelAdapter
from kdc.models.shapes import apply_shapes, tensor_shapes
from kdc.rundir import atomic_dir, write_json

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers", "num_layers")


class LogitsOnly(nn.Module):
    """Wraps a HF model so `forward(input_ids, attention_mask)` returns the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (the one whose length is the config's layer count)."""
    n = next(getattr(model.config, k) for k in LAYER_COUNT_KEYS if hasattr(model.config, k))
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise UserError(f"cannot find the {n} transformer layers of {type(model).__name__}",
                    field="teacher", fix="use a BERT-like encoder")


class HFTextAdapter(ModelAdapter):
    """A sequence classifier with its tokenizer; inputs `input_ids` and `attention_mask`."""

    family = "transformer"
    input_names = ["input_ids", "attention_mask"]

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.module = LogitsOnly(model)

    @classmethod
    def from_dir(cls, path: Path, *, max_length: int, trust_remote_code: bool = False,
                 num_labels: int | None = None) -> HFTextAdapter:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (path / "config.json").is_file():
            raise UserError("not a Hugging Face model directory (no config.json)",
                            source=str(path), field="teacher.path",
                            fix="point to a directory saved with save_pretrained")
        kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        if num_labels is not None:
            kw["num_labels"] = num_labels
        shapes = path / "shapes.json"
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                trust_remote_code=trust_remote_code)
            if shapes.is_file():  # a (possibly pruned) kdc student: rebuild shapes, then load
                from safetensors.torch import load_file
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(str(path), **kw)
                model = AutoModelForSequenceClassification.from_config(
                    config, trust_remote_code=trust_remote_code)
                apply_shapes(model, json.loads(shapes.read_text()))
                model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(str(path), **kw)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model: {str(e).splitlines()[0][:200]}",
                            source=str(path), field="teacher.path",
                            fix="check the directory has weights, config and tokenizer") from None
        return cls(model.eval(), tok, max_length)

    def encode(self, features: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(list(features), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in self.input_names}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}

    @property
    def config(self) -> Any:
        return self.model.config

    def architecture(self) -> dict[str, Any]:
        c = self.config
        layers = layer_list(self.model)
        return {"adapter": "huggingface", "family": "transformer", "model_type": c.model_type,
                "num_hidden_layers": len(layers), "hidden_size": c.hidden_size,
                "num_attention_heads": c.num_attention_heads,
                "intermediate_size": getattr(c, "intermediate_size", None),
                "vocab_size": c.vocab_size, "num_labels": c.num_labels,
                "max_length": self.max_length, "params": self.params()}

    def select_layers(self, keep: list[int]) -> HFTextAdapter:
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
        return HFTextAdapter(model.eval(), self.tokenizer, self.max_length)

    def feature_modules(self) -> dict[str, nn.Module]:
        blocks = layer_list(self.model)
        return {f"layer{i}": b for i, b in enumerate(blocks)}

    def save(self, directory: Path) -> list[Path]:
        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
            write_json(tmp / "shapes.json", tensor_shapes(self.model))
            write_json(tmp / "kdc_model.json", {"adapter": "huggingface",
                                                "max_length": self.max_length,
                                                "architecture": self.architecture()})
        return sorted(p for p in directory.rglob("*") if p.is_file())
