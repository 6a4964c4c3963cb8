"""Hugging Face transformers from a local model directory: what every transformer adapter shares
(`TransformerAdapter`: layer selection, teacher slicing, saving), the text ones' tokenizer inputs
(`TextTransformerAdapter`), and sequence classifiers (BERT, RoBERTa, DistilBERT, ELECTRA, …)."""

from __future__ import annotations

import copy
import json
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from kdc.errors import UserError, first_line
from kdc.hf_files import TOKENIZER_FIX, check_model_dir, check_tokenizer
from kdc.models.base import ModelAdapter
from kdc.models.hf_weights import check_student_keys, check_teacher_keys
from kdc.models.shapes import apply_shapes, tensor_shapes
from kdc.rundir import write_json

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers", "num_layers")
INTERMEDIATE_KEYS = ("intermediate_size", "hidden_dim")
HIDDEN_WIDTH_KEYS = ("embedding_size", "pooler_hidden_size")
# the projections of narrower embeddings (`embedding_size`) up to the hidden size: ELECTRA's,
# after the embeddings' LayerNorm, and DeBERTa-v2's, before it
PROJECTIONS = ("embeddings_project", "embed_proj")


class LogitsOnly(nn.Module):
    """Wraps a HF model so `forward(input_ids, attention_mask[, token_type_ids])` returns the
    logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **types).logits


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (the one whose length is the config's layer count)."""
    n = next((getattr(model.config, k) for k in LAYER_COUNT_KEYS if hasattr(model.config, k)), None)
    for _, mod in model.named_modules():
        if n is not None and isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise UserError(
        f"cannot find the {n or 'stacked'} transformer layers of {type(model).__name__}",
        field="teacher",
        fix="use a BERT-like encoder",
    )


def keep_layers(config: Any, keep: list[int]) -> None:
    """Make a Hugging Face config state the teacher layers `keep` (in order): its layer count,
    their `pruned_heads` renumbered, and a backbone config's stages (BEiT's: `stem` and one per
    layer), whose `out_features` naming a stage beyond the last (the teacher's `stage12`) would
    stop the student's config from loading; they follow the last stage, as a new config's do."""
    n = len(keep)
    for k in LAYER_COUNT_KEYS:
        if hasattr(config, k):
            setattr(config, k, n)
    pruned = getattr(config, "pruned_heads", None) or {}
    if pruned:
        config.pruned_heads = {i: pruned[t] for i, t in enumerate(keep) if pruned.get(t)}
    names = getattr(config, "stage_names", None)
    if isinstance(names, list) and names[:1] == ["stem"] and len(names) != n + 1:
        config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, n + 1)]
        config.out_features = None  # BackboneConfigMixin's setter: the last stage


def bert_attention(mod: nn.Module) -> bool:
    """Whether `mod` is a BERT-style self-attention (query/key/value Linear layers, int head count
    and size: BERT, RoBERTa, ELECTRA, XLM-R, ViT …): kdc taps and prunes it."""
    linear = all(isinstance(getattr(mod, k, None), nn.Linear) for k in ("query", "key", "value"))
    sizes = ("num_attention_heads", "attention_head_size")
    return linear and all(isinstance(getattr(mod, k, None), int) for k in sizes)


def block_attention(block: nn.Module) -> nn.Module | None:
    """A block's BERT-style self-attention (`bert_attention`), None in other families."""
    return next(filter(bert_attention, block.modules()), None)


def attention_sizes(heads: list[int], head_size: int, hidden: int) -> dict[str, Any]:
    """The architecture keys of layers of `heads` heads (each layer's) of `head_size` dims in a
    residual stream `hidden` wide: `num_attention_heads` (the first layer's) and, where heads
    were pruned, `attention_head_size` (attention narrower than the hidden size) and
    `layer_heads` (where the layers' counts differ), by which the latency model costs each
    layer (`kdc.deploy.arch_cost`)."""
    sizes: dict[str, Any] = {"num_attention_heads": heads[0]}
    if any(n * head_size != hidden for n in heads):
        sizes["attention_head_size"] = head_size
    if len(set(heads)) > 1:
        sizes["layer_heads"] = list(heads)
    return sizes


def sync_attention_heads(model: nn.Module) -> None:
    """Make each self-attention's head count agree with its query layer after structured pruning
    (or when reloading a pruned model): whole heads are pruned, the head size never is."""
    for mod in filter(bert_attention, model.modules()):
        mod.all_head_size = mod.query.out_features
        mod.num_attention_heads = mod.query.out_features // mod.attention_head_size


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the dropout on attention probabilities (not on hidden states) of every attention
    module in `model` to `p`, and its config's key; returns how many modules changed. With p 0
    PyTorch's fused CPU attention kernel runs in training too (with dropout it falls back to
    the unfused path, about 6x slower forward)."""
    n = 0
    for mod in model.modules():
        for key in ATTENTION_DROPOUT_KEYS:  # the configs of the model and of any wrapped one
            if hasattr(getattr(mod, "config", None), key):
                setattr(mod.config, key, p)
        inner = (c for c in mod.children() if "Attention" in type(c).__name__)
        if "Attention" not in type(mod).__name__ or next(inner, None) is not None:
            continue  # a wrapper's own dropout (MPNetAttention's) is on hidden states
        touched = False
        prob = getattr(mod, "dropout_prob", None)
        if isinstance(prob, (int, float)) and not isinstance(prob, bool):  # HF sdpa/eager
            mod.dropout_prob = p
            touched = True
        for name in ("dropout", "attn_drop", "attention_dropout"):  # HF eager, timm, ALBERT
            child = getattr(mod, name, None)
            if isinstance(child, nn.Dropout):
                child.p = p
                touched = True
        n += touched
    return n


def _load_error(e: Exception, path: Path, what: str, fix: str) -> UserError:
    """One line for a failed from_pretrained: `what` and the error's first line, or that the
    model needs trust_remote_code."""
    if "trust_remote_code" in str(e):
        return UserError(
            "the model needs its own Python code (auto_map in config.json)",
            source=str(path),
            field="teacher.trust_remote_code",
            fix="set it to true only if you trust that code",
        )
    return UserError(f"{what}: {first_line(e)}", source=str(path), field="teacher.path", fix=fix)


def load_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    """The tokenizer of a Hugging Face directory; errors are one-line UserErrors."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as e:  # missing or damaged tokenizer files raise several types
        check_tokenizer(path, "teacher.path")  # names what is missing, where it can tell
        raise _load_error(e, path, "cannot load the tokenizer", TOKENIZER_FIX) from None


@contextmanager
def _hf_warnings_off() -> Iterator[None]:
    """transformers' logging at errors only: its "newly initialized ... You should probably
    TRAIN this model" warning preceded kdc's own one-line error for the same weights."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_model(path: Path, auto_class: Any, kw: dict[str, Any], trust_remote_code: bool) -> Any:
    """The model of a Hugging Face directory through `auto_class` (AutoModel…) in eval mode; a
    kdc student (shapes.json) is rebuilt at its saved, possibly pruned, shapes; any other model
    must have every weight it uses (`check_teacher_keys`). `kw` goes to from_pretrained /
    AutoConfig. Errors are one-line UserErrors."""
    from transformers import AutoConfig

    shapes = path / "shapes.json"
    try:
        if shapes.is_file():  # a (possibly pruned) kdc student: rebuild shapes, then load
            from safetensors.torch import load_file

            config = AutoConfig.from_pretrained(str(path), **kw)
            model = auto_class.from_config(config, trust_remote_code=trust_remote_code)
            apply_shapes(model, json.loads(shapes.read_text()))
            sync_attention_heads(model)
            from kdc.models.pruned_config import sync_config

            sync_config(model)  # a pruned student saved before its config stated its sizes
            loaded = model.load_state_dict(load_file(str(path / "model.safetensors")), False)
            check_student_keys(path, loaded.missing_keys, loaded.unexpected_keys)
        else:
            with _hf_warnings_off():  # kdc judges the missing weights itself, in one line
                model, info = auto_class.from_pretrained(str(path), output_loading_info=True, **kw)
            check_teacher_keys(path, model, (info or {}).get("missing_keys", []), auto_class)
    except (OSError, ValueError, SafetensorError) as e:
        raise _load_error(
            e, path, "cannot load model", "check the directory has weights and config.json"
        ) from None
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise _load_error(  # config.json edited after saving (num_labels, hidden_size ...)
            e,
            path,
            "config.json does not match the weights",
            "save the model and its config together (save_pretrained), or undo the edit of "
            "config.json (num_labels/id2label, sizes)",
        ) from None
    return model.eval()


def load_pretrained(
    path: Path, auto_class: Any, kw: dict[str, Any], trust_remote_code: bool
) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) of a Hugging Face text model directory (`load_model`)."""
    check_model_dir(path, "teacher.path")
    tok = load_tokenizer(path, trust_remote_code)
    return load_model(path, auto_class, kw, trust_remote_code), tok


def hidden_size(model: nn.Module) -> int:
    """The residual stream's live width (pruning changes it; the HF config keeps the original):
    the inputs of the first block's first Linear layer (its attention's query). Not the token
    embedding's width, which ELECTRA's and DeBERTa's `embedding_size` can set apart from it."""
    block = layer_list(model)[0]
    return int(next(m for m in block.modules() if isinstance(m, nn.Linear)).in_features)


class TransformerAdapter(ModelAdapter):
    """What the Hugging Face transformer adapters share: a `model` whose blocks are one
    ModuleList, layer selection, teacher slicing and saving. Subclasses give the inputs
    (`encode`, `dynamic_axes`), `_like` (the same adapter around another model), what their
    architecture adds (`_inputs_meta`) and the preprocessing files saved beside the weights."""

    family = "transformer"
    output_name = "logits"
    adapter_name: str
    model: nn.Module

    @abstractmethod
    def _like(self, model: nn.Module) -> Self:
        """This adapter (same preprocessing and settings) around `model`."""

    @abstractmethod
    def _inputs_meta(self) -> dict[str, Any]:
        """The input geometry `load_student` and the cost model need (max_length, image size)."""

    @abstractmethod
    def _save_preprocessing(self, directory: Path) -> None:
        """Write the tokenizer or image processor beside the weights."""

    def _meta(self) -> dict[str, Any]:
        """Adapter settings `load_student` needs besides the shapes (kdc_model.json)."""
        return {}

    @property
    def config(self) -> Any:
        return self.model.config

    def architecture(self) -> dict[str, Any]:
        c = self.config
        layers = layer_list(self.model)
        hidden = hidden_size(self.model)
        # live sizes (structured pruning changes them; the HF config keeps the original ones),
        # each layer's heads (pruned heads may leave layers different counts)
        atts: list[Any] = [block_attention(b) for b in layers]
        heads = (
            attention_sizes(
                [a.num_attention_heads for a in atts], atts[0].attention_head_size, hidden
            )
            if all(atts)
            else {"num_attention_heads": c.num_attention_heads}
        )
        ffn = getattr(getattr(layers[0], "intermediate", None), "dense", None)
        if ffn is None:  # DistilBERT's
            ffn = getattr(getattr(layers[0], "ffn", None), "lin1", None)
        return {
            "adapter": self.adapter_name,
            "family": "transformer",
            "model_type": c.model_type,
            "num_hidden_layers": len(layers),
            "hidden_size": hidden,
            **heads,
            "intermediate_size": ffn.out_features
            if isinstance(ffn, nn.Linear)
            else next((getattr(c, k) for k in INTERMEDIATE_KEYS if hasattr(c, k)), None),
            **self._meta(),
            **self._inputs_meta(),
            "params": self.params(),
        }

    def select_layers(self, keep: list[int]) -> Self:
        """A copy keeping only the teacher layers `keep` (in order), weights included."""
        model = copy.deepcopy(self.model)
        blocks = layer_list(model)
        kept = nn.ModuleList([blocks[i] for i in keep])
        for name, mod in model.named_modules():
            if mod is blocks:
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                setattr(parent, name.rpartition(".")[2], kept)
        keep_layers(model.config, keep)
        return self._like(model.eval())

    def sliced(self, spec: dict[str, Any]) -> Self:
        """A smaller model of the same class: teacher layers `spec["layers"]` (in order) with
        `hidden_size`, `num_attention_heads` and `intermediate_size` (each defaulting to the
        teacher's). Weights are teacher slices chosen by L2 magnitude: one set of hidden channels
        for the whole residual stream, whole heads per layer (or their strongest dims when the
        head dim shrinks), the strongest FFN units per layer. Equal sizes copy the teacher, its
        pruned heads too (other sizes take all their heads from those each kept layer has)."""
        from kdc.models.hf_slice import slice_state
        from kdc.models.pruned_config import (
            attention_widths,
            check_attention_width,
            check_sliceable,
        )

        check_sliceable(self.model)
        keep = list(spec["layers"])
        sizes = {
            k: int(spec.get(k) or getattr(self.config, k))
            for k in ("hidden_size", "num_attention_heads")
        }
        config = copy.deepcopy(self.config)
        keep_layers(config, keep)  # the teacher's sizes keep its pruned heads, any other all
        if any(sizes[k] != getattr(config, k) for k in sizes):
            config.pruned_heads = {}
            check_attention_width(attention_widths(self.model), keep, sizes["hidden_size"])
        # widths a config sets to the hidden size unless told otherwise: ELECTRA's and DeBERTa's
        # embeddings (no projection to add), DeBERTa's pooler (a 32-wide one fed 16 crashed)
        for k in HIDDEN_WIDTH_KEYS:
            if getattr(config, k, None) == config.hidden_size:
                setattr(config, k, sizes["hidden_size"])
        if getattr(config, "embedding_size", None) == sizes["hidden_size"] and any(
            n.endswith(PROJECTIONS) for n, _ in self.model.named_modules()
        ):  # HF builds the projection only for unequal widths (see _widened_embeddings)
            config.embedding_size += 1
        for k, v in sizes.items():
            setattr(config, k, v)
        inter_key = next((k for k in INTERMEDIATE_KEYS if hasattr(config, k)), None)
        if inter_key and spec.get("intermediate_size"):
            setattr(config, inter_key, int(spec["intermediate_size"]))
        from transformers.modeling_utils import no_init_weights

        with no_init_weights():  # every tensor is overwritten by a teacher slice below
            student = type(self.model)(config)
        state = slice_state(self.model, student, keep, self.config)
        student.load_state_dict(state, strict=True)
        return self._like(student.eval())

    def feature_modules(self) -> dict[str, nn.Module]:
        return {f"layer{i}": b for i, b in enumerate(layer_list(self.model))}

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        self._save_preprocessing(directory)
        write_json(directory / "shapes.json", tensor_shapes(self.model))
        write_json(
            directory / "kdc_model.json",
            {
                "adapter": self.adapter_name,
                **self._meta(),
                **self._inputs_meta(),
                "architecture": self.architecture(),
            },
        )
        return sorted(p for p in directory.rglob("*") if p.is_file())


ENCODE_ROWS = 1024  # texts tokenized at a time


class TextTransformerAdapter(TransformerAdapter):
    """A text transformer with its tokenizer (inputs `input_ids`, `attention_mask`, and
    `token_type_ids` where text pairs are told apart by them)."""

    input_names = ["input_ids", "attention_mask"]
    tokenizer: Any
    max_length: int

    def encode(
        self,
        features: list[str] | list[tuple[str, str]],
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Token inputs padded to max_length; text pairs (2-tuples) as the tokenizer's text and
        text_pair, truncated longest first. Tokenized `ENCODE_ROWS` texts at a time into the
        arrays returned (`progress` told each chunk's rows): tokenizing all of a 30,000-row
        split at once peaked at 1.73 GB (1.4 GB kept after) for 0.12 GB of arrays."""
        n = len(features)
        out = {k: np.zeros((n, self.max_length), np.int64) for k in self.input_names}
        for start in range(0, n, ENCODE_ROWS):
            chunk = features[start : start + ENCODE_ROWS]
            pairs = isinstance(chunk[0], tuple)
            enc = self.tokenizer(
                [f[0] for f in chunk] if pairs else list(chunk),
                [f[1] for f in chunk] if pairs else None,
                padding="max_length",
                padding_side="right",  # trimming, augmentation and the teacher cache cut at the end
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            for k, v in out.items():
                v[start : start + len(chunk)] = enc[k]
            if progress is not None:
                progress(len(chunk))
        return out

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        seq = {0: "batch", 1: "sequence"}
        return {**{k: seq for k in self.input_names}, self.output_name: {0: "batch"}}

    def _inputs_meta(self) -> dict[str, Any]:
        return {"vocab_size": self.config.vocab_size, "max_length": self.max_length}

    def _save_preprocessing(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory))


def uses_token_types(model: nn.Module, tokenizer: Any) -> bool:
    """Whether the model tells a pair's two texts apart by token type ids (BERT, ALBERT,
    ELECTRA, MiniLM: a type embedding of 2+ rows, and a tokenizer that makes them); RoBERTa,
    DistilBERT and DeBERTa-v2 (no such table, or one row) read the separator tokens alone."""
    types = getattr(model.config, "type_vocab_size", 0) or 0
    return types > 1 and "token_type_ids" in getattr(tokenizer, "model_input_names", ())


class HFTextAdapter(TextTransformerAdapter):
    """A sequence classifier with its tokenizer; output `logits`. With `text_pair` it reads
    pairs of texts, and takes `token_type_ids` too where the model uses them."""

    adapter_name = "huggingface"

    def __init__(
        self, model: nn.Module, tokenizer: Any, max_length: int, text_pair: bool = False
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_pair = text_pair
        self.module = LogitsOnly(model)
        types = ["token_type_ids"] if text_pair and uses_token_types(model, tokenizer) else []
        self.input_names = ["input_ids", "attention_mask", *types]

    @classmethod
    def from_dir(
        cls,
        path: Path,
        *,
        max_length: int,
        trust_remote_code: bool = False,
        text_pair: bool = False,
    ) -> HFTextAdapter:
        from transformers import AutoModelForSequenceClassification

        kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        model, tok = load_pretrained(
            path, AutoModelForSequenceClassification, kw, trust_remote_code
        )
        return cls(model, tok, max_length, text_pair)

    def _like(self, model: nn.Module) -> HFTextAdapter:
        return HFTextAdapter(model, self.tokenizer, self.max_length, self.text_pair)

    def _meta(self) -> dict[str, Any]:
        return {"text_pair": True} if self.text_pair else {}

    def architecture(self) -> dict[str, Any]:
        return {**super().architecture(), "num_labels": self.config.num_labels}
