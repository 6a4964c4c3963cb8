"""A fixed, seeded set of generated ONNX models to calibrate and evaluate the latency model: MLPs,
CNNs (`kdc.models.cnn.SmallCNN`) and BERT encoders (random init) at several widths and depths,
each in a float and an INT8 (static QDQ) version.

`calibration_set()` and `evaluation_set()` never share an architecture, so the bench never
evaluates on what the calibration fitted. `generate(models, out_dir, engine=...)` exports them as
kdc's build stage would for that engine and writes `manifest.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kdc.errors import UserError
from kdc.rundir import atomic_path, now_iso, read_json, write_json

MANIFEST = "manifest.json"
SEQ = 128
VOCAB = 1024
CALIBRATION_ROWS = 4
ENGINES = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class ZooModel:
    """One model of the set: its architecture, the precision it is built for and the padding
    it is timed at."""

    name: str
    family: str
    arch: dict[str, Any]
    precision: str
    batch: int = 1
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    padding: float = 0.0
    """Fraction of each attention mask's trailing positions set to 0 when timed (transformers)."""

    @property
    def graph(self) -> str:
        """The ONNX file's stem: models that differ only in `padding` share one graph."""
        return f"{_name(self.arch)}_{self.precision}"


def mlp(widths: Sequence[int], batch: int = 1) -> dict[str, Any]:
    """Linear+ReLU layers `widths[0] → widths[1] → …`, timed at `batch` rows."""
    return {"family": "mlp", "widths": [int(w) for w in widths], "batch": int(batch)}


def cnn(channels: Sequence[int], image: int, depth: int = 1) -> dict[str, Any]:
    """SmallCNN (3-channel input) as an architecture dict `kdc.deploy.arch_cost` also reads."""
    layers: list[dict[str, Any]] = []
    for i, c in enumerate(channels):
        layers += [{"op": "conv", "out": int(c), "kernel": 3}] * depth
        if i < len(channels) - 1:
            layers.append({"op": "maxpool", "kernel": 2, "stride": 2, "padding": 0})
    layers += [{"op": "global_pool"}, {"op": "linear", "out": 10}]
    return {
        "family": "cnn",
        "channels": [int(c) for c in channels],
        "depth": int(depth),
        "input_shape": [3, int(image), int(image)],
        "layers": layers,
    }


def transformer(
    layers: int,
    hidden: int,
    seq: int = SEQ,
    ffn: int = 4,
    heads: int | None = None,
    cls_only: bool = False,
) -> dict[str, Any]:
    """A BERT encoder with a classification head (64-wide heads unless `heads`, `ffn`×
    intermediate); `cls_only`: its last layer computes only [CLS], as kdc exports students
    (`kdc.export.cls_only`)."""
    arch = {
        "family": "transformer",
        "num_hidden_layers": int(layers),
        "hidden_size": int(hidden),
        "num_attention_heads": int(heads or max(1, hidden // 64)),
        "intermediate_size": int(ffn * hidden),
        "vocab_size": VOCAB,
        "max_length": int(seq),
        "num_labels": 2,
    }
    return {**arch, "cls_only_last_layer": True} if cls_only else arch


def _shapes(arch: dict[str, Any], batch: int) -> dict[str, list[int]]:
    fam = arch["family"]
    if fam == "transformer":
        return {
            "input_ids": [batch, arch["max_length"]],
            "attention_mask": [batch, arch["max_length"]],
        }
    if fam == "cnn":
        return {"pixel_values": [batch, *arch["input_shape"]]}
    return {"features": [batch, arch["widths"][0]]}


def _name(arch: dict[str, Any]) -> str:
    fam = arch["family"]
    if fam == "transformer":
        a = arch
        ffn = a["intermediate_size"] // a["hidden_size"]
        tail = f"_f{ffn}" if ffn != 4 else ""
        if a["num_attention_heads"] != max(1, a["hidden_size"] // 64):
            tail += f"_a{a['num_attention_heads']}"
        tail += "_cls" if a.get("cls_only_last_layer") else ""
        return f"bert_l{a['num_hidden_layers']}_h{a['hidden_size']}_s{a['max_length']}{tail}"
    if fam == "cnn":
        ch = "-".join(str(c) for c in arch["channels"])
        return f"cnn_c{ch}_d{arch['depth']}_i{arch['input_shape'][1]}"
    return f"mlp_w{'-'.join(str(w) for w in arch['widths'])}_b{arch['batch']}"


def models(
    archs: Sequence[dict[str, Any]],
    precisions: Sequence[str],
    paddings: Sequence[float] = (0.0,),
) -> list[ZooModel]:
    """Every architecture at every precision (batch 1 unless the architecture names one), the
    transformers once per attention-mask `paddings` fraction."""
    out = []
    for a in archs:
        b = a.get("batch", 1)
        for p in precisions:
            for pad in paddings if a["family"] == "transformer" else (0.0,):
                tail = f"_pad{round(pad * 100)}" if pad else ""
                out.append(
                    ZooModel(f"{_name(a)}_{p}{tail}", a["family"], a, p, b, _shapes(a, b), pad)
                )
    return out


CALIBRATION_ARCHS = [
    mlp([64, 64, 10]),  # microseconds: the runtime's per-call cost dominates
    cnn([8, 16], 16),
    mlp(
        [256, 256, 256, 10],
    ),
    mlp(
        [1024, 1024, 1024, 10],
    ),
    mlp([512, 2048, 512, 10], batch=16),
    mlp([768, 3072, 768, 10], batch=128),
    cnn([16, 32, 64], 32),
    cnn([32, 64, 128], 64, depth=2),
    cnn([24, 48, 96, 192], 96),
    cnn([64, 128, 256], 128),
    transformer(1, 192),
    transformer(3, 320, seq=64),
    transformer(2, 576),
    transformer(5, 448, seq=96),
    transformer(2, 256, seq=256, ffn=2),
    # 32-wide heads (MiniLM, kdc's sliced students) and a [CLS]-only last layer, as kdc exports
    # classifiers: without them INT8 MiniLM graphs were predicted 13-16 % fast
    transformer(3, 256, seq=192, heads=8),
    transformer(2, 448, seq=192, heads=14, cls_only=True),
]
QUICK_ARCHS = [mlp([128, 128, 10]), cnn([8, 16], 32), transformer(1, 64, seq=32)]
EVALUATION_ARCHS = [
    *[
        transformer(layers, hidden)
        for layers, hidden in [
            (1, 128),
            (2, 128),
            (4, 128),
            (12, 128),
            (2, 256),
            (4, 256),
            (8, 256),
            (12, 256),
            (3, 384),
            (6, 384),
            (2, 512),
            (4, 512),
            (8, 512),
            (1, 768),
            (4, 768),
            (12, 768),
        ]
    ],
    *[
        transformer(layers, 384, heads=12, cls_only=cls)  # MiniLM-shaped
        for layers, cls in [(1, True), (2, True), (4, False), (6, True)]
    ],
    *[
        cnn(ch, image, depth)
        for ch, image, depth in [
            ([16, 32, 64], 64, 1),
            ([32, 64, 128], 32, 1),
            ([32, 64, 128], 96, 1),
            ([16, 32, 64, 128], 128, 1),
            ([48, 96, 192], 64, 2),
            ([64, 128, 256], 64, 1),
            ([24, 48, 96, 192], 160, 1),
            ([32, 64, 128, 256], 224, 1),
        ]
    ],
]


HOST_PADDINGS = (0.0, 0.6)
"""Attention-mask padding the host calibration times transformers at: its masked scores cost
ONNX Runtime's CPU Softmax time (`kdc.deploy.kernels.MASKED`). Device bundles time random inputs
with trtexec, unpadded."""


def calibration_set(
    precisions: Sequence[str] = ("fp32", "int8"),
    quick: bool = False,
    paddings: Sequence[float] = (0.0,),
) -> list[ZooModel]:
    """The models `kdc calibrate` times (`quick`: three tiny models at the first precision)."""
    if quick:
        return models(QUICK_ARCHS, precisions[:1])
    return models(CALIBRATION_ARCHS, precisions, paddings)


def evaluation_set(precisions: Sequence[str] = ("fp32", "int8")) -> list[ZooModel]:
    """The models the bench predicts and measures; no architecture is in `calibration_set`."""
    return models(EVALUATION_ARCHS, precisions)


# ---------------------------------------------------------------------------------------------
# Building and exporting


@dataclass
class _Exportable:
    """What `kdc.export.onnx_export.export_onnx` needs of an adapter."""

    module: Any
    input_names: list[str]
    axes: dict[str, dict[int, str]]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return self.axes

    def exporting(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # exported as built


def _build_mlp(arch: dict[str, Any]) -> _Exportable:
    from torch import nn

    w = arch["widths"]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(w[:-1], w[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(w) - 2 else [])
    axes = {"features": {0: "batch"}, "logits": {0: "batch"}}
    return _Exportable(nn.Sequential(*layers), ["features"], axes)


def _build_cnn(arch: dict[str, Any]) -> _Exportable:
    from kdc.models.cnn import SmallCNN

    net = SmallCNN(in_channels=3, channels=tuple(arch["channels"]), depth=arch["depth"])
    return _Exportable(
        net, ["pixel_values"], {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
    )


def _build_transformer(arch: dict[str, Any]) -> _Exportable:
    import torch
    from torch import nn
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=arch["vocab_size"],
        hidden_size=arch["hidden_size"],
        num_hidden_layers=arch["num_hidden_layers"],
        num_attention_heads=arch["num_attention_heads"],
        intermediate_size=arch["intermediate_size"],
        max_position_embeddings=max(512, arch["max_length"]),
        num_labels=arch["num_labels"],
    )
    bert = BertForSequenceClassification(cfg).eval()
    # Hugging Face initialises biases to zero; the exporter folds zero biases away, and with them
    # the bias fusions ORT makes in a trained model's graph (BiasGelu): give them values
    with torch.no_grad():
        for name, p in bert.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, cfg.initializer_range)
    if arch.get("cls_only_last_layer"):
        from kdc.export.cls_only import ClsOnlyLayer

        layers = bert.bert.encoder.layer
        layers[-1] = ClsOnlyLayer(layers[-1])

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits

    seq = {0: "batch", 1: "sequence"}
    axes = {"input_ids": seq, "attention_mask": seq, "logits": {0: "batch"}}
    return _Exportable(Logits().eval(), ["input_ids", "attention_mask"], axes)


BUILDERS: dict[str, Callable[[dict[str, Any]], _Exportable]] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "transformer": _build_transformer,
}
ORT_OPTIMIZER = {"mlp": "cnn", "cnn": "cnn", "transformer": "transformer"}
"""`kdc.deploy.onnxruntime.optimize` family per zoo family (the cnn one is ORT's generic
offline optimization)."""


def inputs_for(model: ZooModel, rows: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic inputs of the model's shapes (`rows` overrides the batch dimension)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in model.input_shapes.items():
        shape = [rows or shape[0], *shape[1:]]
        if name == "input_ids":
            out[name] = rng.integers(0, model.arch["vocab_size"], size=shape).astype(np.int64)
        elif name == "attention_mask":
            out[name] = np.ones(shape, np.int64)
            out[name][:, shape[1] - round(shape[1] * model.padding) :] = 0
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def export(model: ZooModel, path: Path, seed: int = 0) -> Path:
    """`model` randomly initialised (`seed`) and exported as kdc exports students."""
    import torch

    from kdc.export.onnx_export import export_onnx

    torch.manual_seed(seed)
    net = BUILDERS[model.family](model.arch)
    return export_onnx(net, inputs_for(model, rows=2, seed=seed), path)  # type: ignore[arg-type]


def _finish(model: ZooModel, src: Path, dst: Path, engine: str, seed: int) -> Path:
    """The engine-ready graph: ORT-optimized float or QDQ INT8 (uint8 activations on CPU, int8
    symmetric for TensorRT; the build stage's ops per family; ONNX Runtime's with their masked
    softmaxes floored), as the build stage makes them; TensorRT floats stay as exported."""
    from kdc.deploy.onnxruntime import QUANT_OPS, optimize, quantize_int8
    from kdc.deploy.softmax_floor import floor_file

    trt = engine == "tensorrt"
    if model.precision == "int8":
        calib = [inputs_for(model, seed=seed + 1 + i) for i in range(CALIBRATION_ROWS)]
        ops = QUANT_OPS.get(model.family)  # mlp: None, ORT's default set, as for CNNs
        quantize_int8(src, dst, calib, symmetric_activations=trt, op_types=ops, float_bias=trt)
    elif trt:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    else:
        a = model.arch
        optimize(
            src,
            dst,
            family=ORT_OPTIMIZER[model.family],
            num_heads=a.get("num_attention_heads", 0),
            hidden_size=a.get("hidden_size", 0),
            fuse_masked_attention=False,  # as the build stage leaves it for the floor
        )
    if not trt:  # as the build stage floors its ONNX Runtime graphs
        floor_file(dst)
    return dst


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """ORT's quantizer and shape inference log a warning per tensor they skip: errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


RECIPE = 5
"""How `_finish` makes engine-ready graphs; files of a directory written under another recipe are
made again (2: INT8 quantizes the build stage's ops per family, `QUANT_OPS`; 3: transformers
have non-zero biases; 4: ONNX Runtime graphs have their masked softmaxes floored; 5: and a
text transformer's FP32 attention is left unfused for it, as the build stage leaves it)."""


def generate(
    zoo: Sequence[ZooModel],
    out_dir: Path | str,
    *,
    engine: str = "onnxruntime",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Export every model to `out_dir/<graph>.onnx` (one file for the paddings of a model; one
    already there under this `RECIPE` is kept) and write `manifest.json`; returns the manifest
    rows (name, family, arch, precision, batch, input_shapes, padding, file)."""
    if engine not in ENGINES:
        raise UserError(
            f"unknown engine '{engine}'", field="engine", fix=f"use {' or '.join(ENGINES)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        reuse = read_json(out / MANIFEST).get("recipe") == RECIPE
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        reuse = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdc-zoo-") as scratch:
        exported: dict[str, Path] = {}  # one export per architecture, shared by its precisions
        written: set[Path] = set()  # one graph per architecture and precision, at any padding
        for m in zoo:
            path = out / f"{m.graph}.onnx"
            if not ((reuse or path in written) and path.is_file()):
                if progress:
                    progress(m.name)
                key = json.dumps(m.arch, sort_keys=True)
                graph = replace(m, padding=0.0)  # padding is an input, not a graph
                with _quiet_logs():
                    if key not in exported:
                        raw = Path(scratch) / f"{len(exported)}.onnx"
                        exported[key] = export(graph, raw, seed)
                    _finish(graph, exported[key], path, engine, seed)
                written.add(path)
            rows.append({**asdict(m), "file": path.name})
    write_json(
        out / MANIFEST,
        {"created": now_iso(), "engine": engine, "seed": seed, "recipe": RECIPE, "models": rows},
    )
    return rows


def load_manifest(directory: Path | str) -> list[dict[str, Any]]:
    """The model rows of a directory `generate` wrote."""
    path = Path(directory) / MANIFEST
    try:
        rows = read_json(path)["models"]
    except FileNotFoundError:
        raise UserError(
            "no manifest.json",
            source=str(directory),
            fix="pass a directory written by kdc calibrate",
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(
            "manifest.json is not a model-set manifest",
            source=str(path),
            fix="regenerate the bundle",
        ) from None
    return rows


def zoo_model(row: dict[str, Any]) -> ZooModel:
    """A manifest row back as a ZooModel."""
    return ZooModel(
        row["name"],
        row["family"],
        row["arch"],
        row["precision"],
        row["batch"],
        row["input_shapes"],
        float(row.get("padding", 0.0)),
    )
