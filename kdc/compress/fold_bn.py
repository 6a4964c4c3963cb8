"""BatchNorm folded into the conv before it, for a CNN's quantization-aware training: NNCF then
fake-quantizes the folded weights and the exported graph reads Q/DQ → Conv → (Relu) → Q, which
ONNX Runtime fuses into int8 convs (QLinearConv). A BatchNormalization between a conv and its
output quantizer keeps that conv in float: the digits student's QAT engine ran at 0.4× its FP32
engine's speed. A pair is folded only where torch.fx traces the model and the BatchNorm's input
is exactly that conv's output, read by nothing else, so the folded model computes what the
model did in eval mode (with statistics re-estimated on calibration rows first, where given)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import chain

import onnx
import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from kdc.models.vision import drop_modules

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The (conv, BatchNorm) module names of `model` where the BatchNorm (with running
    statistics) reads only the conv's output and nothing else reads it, each module called once,
    neither's parameters read elsewhere and neither running hooks (`_hooked`); none where
    torch.fx cannot trace `model`."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # e.g. control flow on tensor values: nothing is known safe to fold
        return []
    mods = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    read = {str(n.target).rpartition(".")[0] for n in graph.nodes if n.op == "get_attr"}
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv, bn = mods[src.target], mods[node.target]
        if (
            type(conv) in CONVS
            and type(bn) in NORMS
            and bn.running_mean is not None
            and calls[src.target] == calls[node.target] == 1
            and not {src.target, node.target} & read
            and not any(_hooked(m) for m in (conv, bn))
        ):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _hooked(module: nn.Module) -> bool:
    """Whether `module` runs hooks of its own, which torch.fx does not trace: weight_norm's
    pre-hook recomputes the weight from its parts (it would overwrite a folded one), a forward
    hook may change the output the BatchNorm reads."""
    return bool(module._forward_pre_hooks or module._forward_hooks)


@torch.no_grad()
def recalibrate(model: nn.Module, norms: list[nn.Module], batches: Iterable[tuple]) -> None:
    """Re-estimate the running statistics of `norms` (BatchNorms of `model`) on `batches` (the
    model's positional inputs; one of a single row is skipped): reset, then the average of their
    statistics over the batches (momentum None), `model` run in eval mode but for `norms`. All
    are left in eval mode, `norms` with their momentum. `batches` is read once, lazily."""
    batches = (b for b in batches if len(b[0]) > 1)  # BatchNorm refuses one value a channel
    first = next(batches, None)
    if first is None:
        return
    saved = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for batch in chain([first], batches):
            model(*batch)
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
            m.eval()


@torch.no_grad()
def fold_batchnorm(model: nn.Module, batches: Iterable[tuple] = ()) -> list[tuple[str, str]]:
    """Fold each of `conv_bn_pairs(model)` in place: the conv takes the BatchNorm's running
    statistics, scale and shift into its weight and bias, and the BatchNorm becomes an Identity
    (its name, and a feature tap on it, stay). Given `batches` (the model's positional inputs),
    the statistics of those BatchNorms are first re-estimated on them (`recalibrate`): a student
    distilled briefly (one epoch, momentum 0.1) still holds statistics of its earlier weights,
    which folding would bake into the convs. Returns the pairs folded."""
    pairs = conv_bn_pairs(model)
    if pairs:
        recalibrate(model, [model.get_submodule(bn) for _, bn in pairs], batches)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.bias.requires_grad_(conv.weight.requires_grad)  # a new bias trains as the weight
    drop_modules(model, [bn for _, bn in pairs])
    return pairs


def unfolded_batchnorms(model: onnx.ModelProto) -> list[str]:
    """The BatchNormalization nodes of an exported graph that read a Conv's output: each keeps
    that conv out of ONNX Runtime's int8 fusion."""
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    return [
        n.name or n.output[0]
        for n in model.graph.node
        if n.op_type == "BatchNormalization" and made_by.get(n.input[0]) == "Conv"
    ]
