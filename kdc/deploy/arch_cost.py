"""Architecture dicts to kernels without building a graph (the fast path the search uses): the
kernels `analyze_onnx` finds in the exported model, computed from `family` (transformer | cnn),
sizes and input shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kdc.deploy.kernels import TENSOR_KINDS, GraphCost, KernelShape
from kdc.errors import UserError

# how a head-pruned transformer is costed, in search's input hash from 2 on where the teacher's
# config.json lists pruned heads (`search_versions`): 2, each layer by its own heads and
# attention dims (was: layer 0's count, Q/K/V/O hidden x hidden); others cost as before
HEAD_COSTS_VERSION = 2

_ARCH_ALIASES = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "heads": "num_attention_heads",
    "intermediate": "intermediate_size",
    "vocab": "vocab_size",
    "seq": "max_length",
}


def _transformer(
    arch: dict[str, Any], batch: int, input_shapes: dict[str, list[int]] | None
) -> GraphCost:
    """A BERT-style encoder as torch.onnx exports it: mask, embeddings + LN, per layer Q/K/V
    GEMMs, one attention kernel, output GEMM(+residual), LN, FFN GEMM(+GELU), GEMM(+residual),
    LN; then CLS gather, pooler GEMM+tanh and classifier GEMM (or mean pooling). A vision
    transformer (`patch_size`): patch Conv, `special_tokens` ([CLS]; DeiT's distillation token
    too) and position embeddings instead of the mask and token embeddings, attention without a
    mask, a final LN, no pooler; `classifier_tokens` tokens each gathered into a classifier GEMM
    whose logits are averaged (DeiT's WithTeacher head), or with `pooling: mean` (BEiT) the mean
    of the patch tokens and its LN instead of the final LN and the gather. Each layer's heads
    and attention dims are `_attention_widths`' (pruned heads narrow them)."""
    a = {_ARCH_ALIASES.get(k, k): v for k, v in arch.items()}
    try:
        n_layers, h = int(a["num_hidden_layers"]), int(a["hidden_size"])
        heads = int(a.get("num_attention_heads") or 1)
        inter = int(a.get("intermediate_size") or 4 * h)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"transformer architecture lacks {e}",
            field="architecture",
            fix="give num_hidden_layers and hidden_size",
        ) from None
    layer_heads, widths = _attention_widths(a, n_layers, h, heads)
    image = _image_input(a, input_shapes)  # a vision transformer: (channels, side, patch)
    shape = (input_shapes or {}).get("input_ids")
    seq = int(shape[1]) if shape else int(a.get("max_length") or 0)
    special, n_cls = (int(a.get(k, 1)) for k in ("special_tokens", "classifier_tokens"))
    if image:
        seq = (image[1] // image[2]) ** 2 + special  # patches, [CLS] (and distillation token)
    if seq <= 0:
        raise UserError(
            "no sequence length",
            field="input_shapes",
            fix="pass input_shapes={'input_ids': [batch, seq]} or max_length",
        )
    b, s = int(batch), seq
    bs, bsh = b * s, b * s * h
    ks: list[KernelShape] = []
    w: dict[str, tuple[float, bool, bool]] = {}

    def add(
        name: str,
        ops: tuple[str, ...],
        flops: float,
        act: float,
        weights: float,
        kind: str,
        weight_names: dict[str, float] | None = None,
        scores: float = 0.0,
    ) -> None:
        ks.append(KernelShape(name, ops, flops, act, weights, kind, scores=scores))
        for wn, n in (weight_names or {}).items():
            w[wn] = (n, False, kind in TENSOR_KINDS)

    def linear(
        name: str,
        fin: int,
        fout: int,
        rows: int,
        extra_ops: tuple[str, ...] = (),
        extra_flops: float = 0.0,
        extra_act: float = 0.0,
    ) -> None:
        add(
            name,
            ("MatMul", "Add", *extra_ops),
            2.0 * rows * fin * fout + rows * fout + extra_flops,
            rows * fin + rows * fout + extra_act,
            fin * fout + fout,
            "gemm",
            {f"{name}.w": fin * fout + fout},
        )

    ln = ("LayerNormalization",)
    if image:  # patch Conv (stride = patch), special tokens concatenated, positions added
        c, side, patch = image
        n_p, cpp = s - special, c * patch * patch
        add(
            "patch_embed",
            ("Conv",),
            2.0 * b * n_p * cpp * h + b * n_p * h,
            b * c * side * side + b * n_p * h,
            cpp * h + h,
            "conv",
            {"patch_embed": cpp * h + h},
        )
        add("patch_embed.t", ("Transpose",), 0.0, 2.0 * b * n_p * h, 0.0, "memory")
        add(
            "embeddings",
            ("Reshape", "Transpose", "Concat", "Add"),
            bsh,
            2.0 * bsh,
            s * h + special * h,
            "memory",
            {"position_embeddings": s * h, "special_tokens": special * h},
        )
    else:
        add("mask", ("Cast", "Sub", "Mul"), 3.0 * bs, 2.0 * bs, 2.0, "pointwise")
        add(
            "embeddings",
            ("Gather", "Add", "Add"),
            2.0 * bsh,
            bs + bsh,
            2.0 * bsh + s * h,
            "memory",
            {
                "word_embeddings": a.get("vocab_size", 30522) * h,
                "position_embeddings": s * h,
                "token_type_embeddings": bsh,
            },
        )
        add("embeddings.ln", ln, 8.0 * bsh, 2.0 * bsh, 2.0 * h, "norm", {"emb.ln": 2.0 * h})
    for i, (n_heads, att) in enumerate(zip(layer_heads, widths, strict=True)):
        p = f"layer{i}"
        # with `cls_only_last_layer` (kdc.export.cls_only) the last layer's query, output and
        # FFN run on the first position only; keys and values still cover the sequence
        q = 1 if i == n_layers - 1 and a.get("cls_only_last_layer") else s
        bq, bqh, hs = b * q, b * q * h, b * n_heads * q * s
        bqa, bsa = b * q * att, b * s * att  # the layer's attention dims (its heads' width)
        if q == 1:  # the export slices out the first position and the mask's first query row
            add(f"{p}.cls_slice", ("Slice",), 0.0, 2.0 * b * h, 2.0, "memory")
            add(f"{p}.mask_slice", ("Slice",), 0.0, 2.0 * bs, 3.0, "memory")
        linear(f"{p}.q", h, att, bq)
        for kv in "kv":
            linear(f"{p}.{kv}", h, att, bs)
        add(
            f"{p}.attention",
            (
                "Transpose",
                "Transpose",
                "Transpose",
                "MatMul",
                "Div",
                *(() if image else ("Add",)),  # the mask's Add
                "Softmax",
                "MatMul",
                "Transpose",
            ),
            4.0 * b * q * s * att + 7.0 * hs,
            2.0 * bsa + 2.0 * bqa + bs,
            1.0,
            "attention",
            scores=hs,
        )
        linear(f"{p}.o", att, h, bq, ("Add",), bqh, bqh)
        add(f"{p}.ln1", ln, 8.0 * bqh, 2.0 * bqh, 2.0 * h, "norm", {f"{p}.ln1": 2.0 * h})
        rows_i = bq * inter
        linear(f"{p}.ffn1", h, inter, bq, ("Div", "Erf", "Add", "Mul", "Mul"), 8.0 * rows_i)
        linear(f"{p}.ffn2", inter, h, bq, ("Add",), bqh, bqh)
        add(f"{p}.ln2", ln, 8.0 * bqh, 2.0 * bqh, 2.0 * h, "norm", {f"{p}.ln2": 2.0 * h})
    labels = int(a.get("num_labels") or 0)
    mean_pool = a.get("pooling", "cls") == "mean"
    if image and not mean_pool:  # the final LayerNorm over every token, before the [CLS] gather
        add("final.ln", ln, 8.0 * bsh, 2.0 * bsh, 2.0 * h, "norm", {"final.ln": 2.0 * h})
    if mean_pool and image:  # BEiT: the mean of the patch tokens, then the pooler's LayerNorm
        bph = b * (s - special) * h
        add("patches", ("Slice",), 0.0, bsh + bph, 4.0, "memory")  # tokens after [CLS]
        add("pool", ("ReduceMean",), bph, bph + b * h, 0.0, "reduce")
        add("pool.ln", ln, 8.0 * b * h, 2.0 * b * h, 2.0 * h, "norm", {"pool.ln": 2.0 * h})
    elif mean_pool:
        add("pool", ("ReduceMean",), bsh, bsh + b * h, 0.0, "reduce")
    else:
        for t in range(n_cls):  # each classifier's token
            add(f"cls{t or ''}", ("Gather",), 0.0, 2.0 * b * h, 1.0, "memory")
        if a.get("pooler", not image):  # BERT's pooler; ViT's classifier reads [CLS] directly
            add(
                "pooler",
                ("Gemm", "Tanh"),
                2.0 * b * h * h + 5.0 * b * h,
                2.0 * b * h,
                h * h + h,
                "gemm",
                {"pooler": h * h + h},
            )
    for t in range(n_cls if labels else 0):
        # the last classifier's GEMM also averages the logits: an Add per other one, a Div
        mean = int(n_cls > 1 and t == n_cls - 1)
        add(
            f"classifier{t or ''}",
            ("Gemm", *("Add",) * (n_cls - 1) * mean, *("Div",) * mean),
            2.0 * b * h * labels + b * labels + n_cls * b * labels * mean,
            b * h + b * labels + (n_cls - 1) * b * labels * mean,
            h * labels + labels + mean,
            "gemm",
            {f"classifier{t or ''}": h * labels + labels},
        )
    rows = s if n_layers > 1 or not a.get("cls_only_last_layer") else 1  # of the widest layer
    peak = 3.0 * bsh + b * max(layer_heads) * rows * s + b * rows * inter
    inputs = (
        {"pixel_values": [b, image[0], image[1], image[1]]}
        if image
        else {"input_ids": [b, s], "attention_mask": [b, s]}
    )
    return GraphCost(ks, inputs, w, peak)


def _attention_widths(
    a: dict[str, Any], n_layers: int, h: int, heads: int
) -> tuple[list[int], list[int]]:
    """Each layer's heads and attention dims: `layer_heads` (a head-pruned model's layers may
    keep different counts), else `heads` in every layer; of `attention_head_size` each (heads
    pruned: narrower than the hidden size), else h / heads. A UserError naming the field when
    `layer_heads` is not one whole count per layer."""
    per_layer = a.get("layer_heads") or [heads] * n_layers
    size = a.get("attention_head_size")
    try:
        layer_heads = [int(n) for n in per_layer]
        if len(layer_heads) != n_layers or min(layer_heads) < 1:
            raise ValueError
        widths = [n * int(size) if size else h * n // heads for n in layer_heads]
    except (TypeError, ValueError):
        raise UserError(
            f"transformer architecture's layer_heads {per_layer} (attention_head_size {size}) "
            f"is not a head count for each of its {n_layers} layers",
            field="architecture.layer_heads",
            fix="give one whole number of heads per layer, and a whole attention_head_size",
        ) from None
    return layer_heads, widths


def _image_input(
    a: dict[str, Any], input_shapes: dict[str, list[int]] | None
) -> tuple[int, int, int] | None:
    """(channels, side, patch size) of a vision transformer (`patch_size` in its architecture;
    side from `pixel_values` or `image_size`), else None."""
    if not a.get("patch_size"):
        return None
    given = (input_shapes or {}).get("pixel_values")
    try:
        c, side = (given[1], given[2]) if given else (a["num_channels"], a["image_size"])
        return int(c), int(side), int(a["patch_size"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise UserError(
            "vision transformer architecture (patch_size) without integer num_channels and "
            "image_size",
            field="architecture",
            fix="give num_channels and image_size, or input_shapes={'pixel_values': "
            "[batch, channels, side, side]}",
        ) from None


def _cnn(arch: dict[str, Any], batch: int, input_shapes: dict[str, list[int]] | None) -> GraphCost:
    """A CNN given as `layers`: conv (out, kernel, stride, groups, padding, residual, branch,
    in_shape), maxpool/avgpool (kernel, stride), global_pool, linear (out). BatchNorm, bias and
    activation fold into each conv; `residual` adds the skip-connection read."""
    given = (input_shapes or {}).get("pixel_values")
    shape = list(given[1:]) if given else list(arch.get("input_shape") or [])
    if len(shape) != 3 or "layers" not in arch:
        raise UserError(
            "a cnn architecture needs `layers` and an input shape C×H×W",
            field="architecture",
            fix="pass input_shapes={'pixel_values': [b, c, h, w]} and layers",
        )
    b = int(batch)
    c, hh, ww = (int(x) for x in shape)
    ks: list[KernelShape] = []
    w: dict[str, tuple[float, bool, bool]] = {}
    for i, layer in enumerate(arch["layers"]):
        op = layer.get("op", "conv")
        cin, hin, win = (int(x) for x in layer.get("in_shape") or (c, hh, ww))
        k, st = int(layer.get("kernel", 1)), int(layer.get("stride", 1))
        pad = int(layer.get("padding", k // 2))
        ho, wo = (hin + 2 * pad - k) // st + 1, (win + 2 * pad - k) // st + 1
        name = layer.get("name", f"{op}{i}")
        if op == "conv":
            cout, groups = int(layer["out"]), int(layer.get("groups", 1))
            out = b * cout * ho * wo
            wn = cout * cin // groups * k * k + cout
            extra = 2.0 if layer.get("residual") else 1.0
            act = b * cin * hin * win + out * (2.0 if layer.get("residual") else 1.0)
            ks.append(
                KernelShape(
                    name,
                    ("Conv", "Relu"),
                    2.0 * out * cin // groups * k * k + (1.0 + extra) * out,
                    act,
                    wn,
                    "conv",
                )
            )
            w[name] = (wn, False, True)
            new = (cout, ho, wo)
        elif op in ("maxpool", "avgpool"):
            out = b * cin * ho * wo
            ks.append(
                KernelShape(
                    name,
                    ("MaxPool" if op == "maxpool" else "AveragePool",),
                    out * k * k,
                    b * cin * hin * win + out,
                    0.0,
                    "pool",
                )
            )
            new = (cin, ho, wo)
        elif op == "global_pool":
            ks.append(
                KernelShape(
                    name,
                    ("GlobalAveragePool",),
                    b * cin * hin * win,
                    b * cin * hin * win + b * cin,
                    0.0,
                    "pool",
                )
            )
            new = (cin, 1, 1)
        elif op == "linear":
            fin, fout = cin * hin * win, int(layer["out"])
            ks.append(
                KernelShape(
                    name,
                    ("Gemm",),
                    2.0 * b * fin * fout + b * fout,
                    b * fin + b * fout,
                    fin * fout + fout,
                    "gemm",
                )
            )
            w[name] = (fin * fout + fout, False, True)
            new = (fout, 1, 1)
        else:
            raise UserError(
                f"unknown cnn layer op '{op}'",
                field=f"architecture.layers[{i}]",
                fix="use conv, maxpool, avgpool, global_pool or linear",
            )
        if not layer.get("branch"):
            c, hh, ww = new
    peak = max((k.act_elems for k in ks), default=0.0)
    return GraphCost(ks, {"pixel_values": [b, *(int(x) for x in shape)]}, w, peak)


FAMILIES: dict[str, Callable[[dict[str, Any], int, dict | None], GraphCost]] = {
    "transformer": _transformer,
    "cnn": _cnn,
}


def analyze_architecture(
    arch: dict[str, Any], *, batch: int = 1, input_shapes: dict[str, list[int]] | None = None
) -> GraphCost:
    """Kernels of an architecture dict (`family`: transformer | cnn) without building a graph."""
    family = arch.get("family") or (
        "cnn" if isinstance(arch.get("layers"), list) else "transformer"
    )
    if family not in FAMILIES:
        raise UserError(
            f"unknown architecture family '{family}'",
            field="architecture.family",
            fix=f"use one of {', '.join(FAMILIES)}",
        )
    return FAMILIES[family](arch, batch, input_shapes)
