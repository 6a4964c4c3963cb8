"""Quantization-aware training: insert fake quantizers, train with the distillation losses, export
to ONNX as standard QuantizeLinear/DequantizeLinear pairs (what TensorRT and ONNX Runtime read).
One scheme per model family (SCHEMES): CNNs through NNCF (each BatchNorm first folded into the
conv before it, `fold_bn`; `nncf.quantize`, then `nncf.strip` into torch fake-quantize modules),
transformers through fake-quantized Linear layers and embedding tables (`kdc.compress.fake_quant`:
NNCF's quantized copy of a Hugging Face model does not export).
The exported graph stores weights as int8 and, unless built for TensorRT, activations UINT8,
Gemm biases int32 and embedding rows gathered before they are dequantized
(`kdc.deploy.qdq.finish_qdq`).
With `reduce_range` (x86 int8 kernels without VNNI, whose 16-bit pair sums saturate on 8-bit
weights) both schemes train and export 7-bit weights, as PTQ quantizes them there."""

from __future__ import annotations

import copy
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from kdc.compress.conv_outputs import GraphOps, convs_into_fused_activations, output_quantizer
from kdc.compress.fake_quant import fold_weight_quantizers, freeze_weight_scales, quantize_layers
from kdc.compress.fold_bn import fold_batchnorm
from kdc.compress.hooks import NetworkRoot
from kdc.compress.nncf_ptq import advanced_parameters
from kdc.compress.nncf_quiet import import_nncf, quantize
from kdc.errors import UserError
from kdc.models.base import ModelAdapter
from kdc.rundir import atomic_path

if TYPE_CHECKING:
    from nncf.common.graph import NNCFGraph, NNCFNode

STANDARD_DOMAINS = {"", "ai.onnx"}
QUANTIZER_OPS = {"symmetric_quantize", "asymmetric_quantize"}  # NNCF graph node types


def _use_eager_kernels() -> None:
    """Run NNCF's pure-PyTorch fake-quantize kernels eagerly, on the CPU and (where PyTorch sees
    a GPU, QAT training there) on CUDA. NNCF otherwise compiles a C++ extension on first use
    (minutes on a small CPU, a hang on a stale lock; for CUDA it needs nvcc, else fails) or
    falls back to torch.compile; the numbers are the same."""
    import_nncf()
    from nncf.torch.extensions import ExtensionNamespace
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import torch_executor

    for kernels in (extensions.QuantizedFunctionsCPU, extensions.QuantizedFunctionsCUDA):
        # without CUDA, NNCF's CUDA kernels are a stub that raises on any attribute
        if isinstance(kernels, ExtensionNamespace) and kernels._loaded_namespace is None:
            kernels._loaded_namespace = types.SimpleNamespace(
                Quantize_forward=torch_executor.forward, Quantize_backward=torch_executor.backward
            )


def _import_strip() -> None:
    """nncf.strip imports two observer classes from torchao only to build disabled observers;
    without torchao installed, lend it PyTorch's own (the same classes) for that import only."""
    import_nncf()
    try:
        import torchao  # noqa: F401

        return
    except ImportError:
        pass
    from torch.ao.quantization import observer

    names = ("torchao", "torchao.quantization", "torchao.quantization.pt2e")
    sys.modules.update({n: types.ModuleType(n) for n in names})
    sys.modules["torchao.quantization.pt2e.observer"] = observer
    try:
        import nncf.torch.quantization.strip  # noqa: F401
    finally:
        for n in (*names, "torchao.quantization.pt2e.observer"):
            sys.modules.pop(n, None)


def _with_module(adapter: ModelAdapter, module: torch.nn.Module) -> ModelAdapter:
    """`adapter` running `module`; a Hugging Face adapter's `model` (what its feature taps, slicing
    and config read) becomes the one `module` wraps."""
    out = copy.copy(adapter)
    out.module = module
    if hasattr(adapter, "model") and isinstance(getattr(module, "model", None), torch.nn.Module):
        out.model = module.model
    return out


class _Root(NetworkRoot):
    """A CNN under a plain root module for NNCF, which adds its hook storage as a child of the
    model it quantizes: a bare nn.Sequential root would then call that storage as its last
    layer, and the feature taps would take its weight quantizers for feature maps. Its forward
    names the input (NNCF quantizes only named model inputs) and calls the CNN as kdc does
    (`as_kdc_calls`)."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixel_values)


@dataclass(frozen=True)
class Scheme:
    """How one model family is fake-quantized for training (`quantize(model, adapter, batches,
    symmetric_activations, tensorrt, reduce_range)`) and freed of training-only modules before
    export; `how` describes it for the report. `version` goes up whenever the scheme trains or
    exports differently: distill's input hash holds it from 2 on (a run of version 1 hashes as
    before it existed), so a resumed run of another version trains again."""

    quantize: Callable[
        [torch.nn.Module, ModelAdapter, list[tuple], bool, bool, bool], torch.nn.Module
    ]
    strip: Callable[[torch.nn.Module, tuple], torch.nn.Module]
    how: str
    version: int = 1


def _nncf_quantize(
    model: torch.nn.Module,
    adapter: ModelAdapter,
    batches: list[tuple],
    sym: bool,
    trt: bool,
    seven_bit: bool,
) -> torch.nn.Module:
    """NNCF's fake quantizers (symmetric weights; activations symmetric when asked, and per
    tensor: `advanced_parameters`) on `model` with its BatchNorms folded into their convs
    (`fold_batchnorm`: NNCF would quantize a conv's output before its BatchNorm, which then
    keeps ONNX Runtime's conv in float), their statistics first re-estimated on `batches` (a
    student distilled one epoch held stale ones: QAT val accuracy 0.23 against 0.78 on the
    digits test project), ranges calibrated on `batches`, an activation (a conv's output
    quantizer's too) never negative there kept unsigned (`_unsigned_where_never_negative`);
    7-bit weights with `seven_bit` (`_seven_bit_weights`), else NNCF's overflow fix on the
    first layer (its default for CPUs); neither for TensorRT targets; NNCF's fast bias
    correction unless it would fail on the model (`_bias_correction_fails`); a conv's output
    quantized before an activation other than a ReLU or a Clip from 0, or before a norm
    (`_quantize_conv_outputs`), but for TensorRT, which runs such a pair as one int8 layer.
    Quantized under a plain root (`_Root`), which holds NNCF's hooks, so any module's forward
    (a bare nn.Sequential's) runs as it did."""
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import OverflowFix

    _use_eager_kernels()
    preset = nncf.QuantizationPreset.PERFORMANCE if sym else nncf.QuantizationPreset.MIXED
    fix = OverflowFix.DISABLE if trt or seven_bit else OverflowFix.FIRST_LAYER
    advanced = advanced_parameters(fix)
    fold_batchnorm(model, batches)
    advanced.disable_bias_correction = _bias_correction_fails(_Root(model), batches[0])
    model = quantize(
        _Root(model),
        batches,
        preset=preset,
        fast_bias_correction=True,
        advanced_parameters=advanced,
    )
    graph = _nncf_graph(model, batches[0])
    if not trt:
        _quantize_conv_outputs(model, graph, batches, sym)
    _unsigned_where_never_negative(model)
    _cap_after_clips(model, graph)
    if seven_bit:
        _seven_bit_weights(model, graph)
    return model


def _nncf_graph(model: torch.nn.Module, args: tuple) -> NNCFGraph:
    """NNCF's graph of its quantized `model` run on `args` (one batch of its inputs)."""
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    return build_nncf_graph(model, args if len(args) > 1 else args[0])


def _bias_correction_fails(model: torch.nn.Module, args: tuple) -> bool:
    """Whether NNCF's fast bias correction would fail on `model` (run on `args`): it takes a conv
    and the BatchNorm after it as one layer, its statistics collected at the BatchNorm's output,
    but where that conv's output is read elsewhere too (`bn(y) + y`, a BatchNorm `fold_batchnorm`
    leaves) NNCF quantizes it; then the conv, followed by its quantizer, is a layer of its own,
    and if it has a bias the correction finds no statistics at its output and raises IndexError
    (nncf 3.4, fast_bias_correction/algorithm.py `_get_bias_shift`; torch_backend.py
    `create_input_data` where the BatchNorm has no affine shift). Such a model is quantized
    without bias correction; QAT then trains the biases."""
    from nncf.torch.model_graph_manager import get_const_node, get_potential_fused_node

    graph = _nncf_graph(model, args)
    return any(
        len(graph.get_next_nodes(node)) > 1
        and get_potential_fused_node(node.node_name, graph) is not None
        and get_const_node(node, node.metatype.bias_port_id, graph) is not None
        for node in graph.get_all_nodes()
    )


def _unsigned_where_never_negative(model: torch.nn.Module) -> None:
    """Fix at 0 the lower bound of each asymmetric (activation) quantizer of NNCF's `model` whose
    calibration saw no negative value (a ReLU's output): it stays unsigned with zero point 0, as
    NNCF's symmetric quantizers stay unsigned where calibration saw none. Trained free, the bound
    of a ReLU's output drifted below 0 (zero point 2-3 after QAT at lr 0.01), so ONNX Runtime
    could not drop the Relu before its QuantizeLinear and ran that conv as a float FusedConv."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import AsymmetricQuantizer

    for _, quantizer in get_hook_storage(model).named_hooks():
        if isinstance(quantizer, AsymmetricQuantizer) and bool((quantizer.input_low >= 0).all()):
            quantizer.input_low.requires_grad_(False).zero_()


class _Range(torch.nn.Module):
    """A hook that records the smallest and largest value it passes on."""

    def __init__(self) -> None:
        super().__init__()
        self.low, self.high = float("inf"), float("-inf")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))
        return x


def _torch_ops() -> GraphOps:
    """What `convs_into_fused_activations` looks for in NNCF's PyTorch graph."""
    from nncf.common.graph.patterns import GraphPattern
    from nncf.torch.graph.operator_metatypes import (
        PTAddMetatype,
        PTDivMetatype,
        PTMulMetatype,
        PTRELUMetatype,
    )
    from nncf.torch.graph.pattern_operations import ATOMIC_ACTIVATIONS_OPERATIONS
    from nncf.torch.model_graph_manager import CONV_META_TYPES

    return GraphOps(
        convs=CONV_META_TYPES,
        activations=ATOMIC_ACTIVATIONS_OPERATIONS[GraphPattern.METATYPE_ATTR],
        relus={PTRELUMetatype},  # relu, relu_
        muls={PTMulMetatype},
        adds={PTAddMetatype},
        divs={PTDivMetatype},
        quantized=lambda node: node.node_type in QUANTIZER_OPS,
        clip_bounds=_clip_bounds,
        norms={"batch_norm", "group_norm", "layer_norm", "instance_norm"},
        layouts={"permute", "transpose", "reshape", "view"},
    )


@torch.no_grad()
def _quantize_conv_outputs(
    model: torch.nn.Module, graph: NNCFGraph, batches: list[tuple], sym: bool
) -> None:
    """Give each conv of NNCF's `model` read only by an activation ONNX Runtime cannot drop
    (`convs_into_fused_activations`: a MobileNetV3's Hardswish convs, written out or not, an
    EfficientNet's SiLU ones, which it ran in float), or by a norm NNCF quantizes only after
    (an InstanceNorm), an output quantizer (symmetric with `sym`, else asymmetric), in place
    of NNCF's quantizers of a Mul's input reading it
    (`_drop_quantizers_after`: `x * hardsigmoid(x)`), its range NNCF's min-max one of the
    conv's output on `batches`: unsigned where that saw no negative value (NNCF's symmetric
    quantizer takes it so; an asymmetric one is then pinned at 0 by
    `_unsigned_where_never_negative`, as NNCF PTQ's is UINT8 there)."""
    from nncf.quantization.algorithms.min_max.torch_backend import PTMinMaxAlgoBackend
    from nncf.torch.function_hook import register_post_function_hook

    convs = convs_into_fused_activations(graph, _torch_ops())
    ranges = {name: _Range() for name in convs}
    handles = [register_post_function_hook(model, n, 0, r) for n, r in ranges.items()]
    try:
        for batch in batches:
            model(*batch)
    finally:
        for h in handles:
            h.remove()
    for name, seen in ranges.items():
        low, high = (torch.tensor([v]) for v in (seen.low, seen.high))
        config, params = output_quantizer(low, high, sym)
        quantizer = PTMinMaxAlgoBackend._create_quantizer(config, (1,), params, None)
        register_post_function_hook(model, name, 0, quantizer)
        _drop_quantizers_after(model, graph, name)


def _drop_quantizers_after(model: torch.nn.Module, graph: NNCFGraph, name: str) -> None:
    """Delete the quantizers of NNCF's `model` that read op `name`'s output in `graph` (NNCF's
    of a Mul's input), now quantized by that op's output quantizer."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage

    storage = get_hook_storage(model)
    readers = [
        q
        for q in graph.get_next_nodes(graph.get_node_by_name(name))
        if q.node_type in QUANTIZER_OPS
    ]
    inputs = {
        (e.to_node.node_name, e.input_port_id) for q in readers for e in graph.get_output_edges(q)
    }
    for hook in [n for n, _ in storage.named_hooks()]:
        kind, op, port = decode_hook_name(hook)
        if kind == "pre_hooks" and (op, port) in inputs:
            storage.delete_hook(hook)


def _clip_bounds(node: NNCFNode) -> tuple[float, float] | None:
    """The (min, max) a ReLU6 or Hardtanh node clips to (exported as Clip); None for another op."""
    if node.node_type == "relu6":
        return 0.0, 6.0
    attrs = node.layer_attributes
    if node.node_type != "hardtanh" or not hasattr(attrs, "func"):
        return None
    bound = inspect.signature(attrs.func).bind(*attrs.op_args, **attrs.op_kwargs)
    bound.apply_defaults()
    return float(bound.arguments["min_val"]), float(bound.arguments["max_val"])


def _cap_after_clips(model: torch.nn.Module, graph: NNCFGraph) -> int:
    """Keep the range of each unsigned activation quantizer of NNCF's `model` that reads a Clip
    to 0..max (ReLU6, Hardtanh(0, max)) within that max, for training and export (`_cap_range`,
    a forward pre-hook). ONNX Runtime drops a Clip before a QuantizeLinear, and then fuses the
    conv before it into an int8 QLinearConv, only where the quantizer's range lies within the
    Clip's: trained free, a ReLU6's range reached 6.01 and that conv ran as a float FusedConv.
    The range ends a hair below max (1e-6 of it), as ONNX Runtime compares scale * 255 in
    float32. Returns how many quantizers were capped."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import AsymmetricQuantizer, SymmetricQuantizer

    capped = 0
    for name, quantizer in get_hook_storage(model).named_hooks():
        hook, op, _ = decode_hook_name(name)
        bounds = _clip_bounds(graph.get_node_by_name(op)) if hook == "post_hooks" else None
        if bounds is None or bounds[0] != 0:
            continue
        if isinstance(quantizer, AsymmetricQuantizer) and not quantizer.input_low.any():
            quantizer.capped_param = "input_range"  # from input_low 0 on
        elif isinstance(quantizer, SymmetricQuantizer) and not quantizer.signed:
            quantizer.capped_param = "scale"
        else:
            continue
        quantizer.range_cap = bounds[1] * (1 - 1e-6)
        quantizer.register_forward_pre_hook(_cap_range)
        _cap_range(quantizer)
        capped += 1
    return capped


@torch.no_grad()
def _cap_range(quantizer: torch.nn.Module, args: tuple = ()) -> None:
    """Clamp the range of a quantizer `_cap_after_clips` marked to its `range_cap` (NNCF reads
    the range's magnitude)."""
    getattr(quantizer, quantizer.capped_param).clamp_(-quantizer.range_cap, quantizer.range_cap)


def _seven_bit_weights(model: torch.nn.Module, graph: NNCFGraph) -> int:
    """Make every weight quantizer of NNCF's `model` 7-bit (NNCF's half range: levels -63..63 of
    the calibrated scale, so a channel's largest weight is 63 at first), trained and exported so:
    nncf.strip clamps the weights to it and exports an 8-bit Q/DQ of the same step (int8 values
    within [-64, 63]). NNCF's OverflowFix.ENABLE is not it: in PyTorch it only widens the initial
    scale of 8-bit quantizers, which QAT then learns back (a toy CNN's exported weights reached
    ±88 after one epoch). Returns how many quantizers were changed."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.model_graph_manager import get_const_node
    from nncf.torch.quantization.layers import SymmetricQuantizer

    changed = 0
    for name, quantizer in get_hook_storage(model).named_hooks():
        hook, op, port = decode_hook_name(name)
        if hook != "pre_hooks" or not isinstance(quantizer, SymmetricQuantizer):
            continue
        if get_const_node(graph.get_node_by_name(op), port, graph) is None:  # an activation
            continue
        quantizer._half_range = True  # what NNCF's own half-range quantizers set (no setter)
        quantizer.set_levels()
        changed += 1
    return changed


def _nncf_strip(model: torch.nn.Module, args: tuple) -> torch.nn.Module:
    """NNCF's quantizers of `model` as PyTorch fake-quantize modules, each range capped after a
    Clip clamped first (an optimizer step after the last forward may have moved it)."""
    for m in model.modules():
        if hasattr(m, "range_cap"):
            _cap_range(m)
    nncf = import_nncf()
    _import_strip()
    return nncf.strip(model, example_input=args if len(args) > 1 else args[0])


def _linear_quantize(
    model: torch.nn.Module,
    adapter: ModelAdapter,
    batches: list[tuple],
    sym: bool,
    trt: bool,
    seven_bit: bool,
) -> torch.nn.Module:
    """Every Linear but the classifier heads (a sentence encoder has none; 7-bit weights with
    `seven_bit`), and every embedding table, fake-quantized (fake_quant.py). `model` is a copy of
    the adapter's module: its heads are found by name."""
    heads = {id(m) for m in adapter.classifiers()}
    names = {n for n, m in adapter.module.named_modules() if id(m) in heads}
    skip = [m for n, m in model.named_modules() if n in names]
    quantize_layers(model, batches, symmetric_activations=sym, skip=skip, reduce_range=seven_bit)
    return model


SCHEMES: dict[str, Scheme] = {
    # 2: BatchNorm folded into the convs, activations per tensor (a depthwise conv's input too)
    # 3: an activation calibration saw no negative value of stays unsigned (zero point 0)
    # 4: a ReLU6's (a Clip to 0..max's) output quantizer kept within max
    # 5: BatchNorm statistics re-estimated on the calibration rows before folding
    # 6: a conv's output quantized before an activation ONNX Runtime cannot drop (Hardswish...)
    # 7: and before a swish written x * sigmoid(x) (`conv_outputs`, shared with NNCF PTQ)
    # 8: off TensorRT, a Gemm's bias int32 and its input dequantized after a Flatten, so ONNX
    # Runtime runs the classifier as an int8 QGemm (`qdq_gemm`, in `finish_qdq`)
    # 9: a conv's output quantizer never negative in calibration kept unsigned (zero point 0)
    # 10: and one before a hard swish written out, x * hardsigmoid(x), x * relu6(x + 3) / 6
    # 11: and one before a norm NNCF quantizes only after (an InstanceNorm)
    "cnn": Scheme(
        _nncf_quantize,
        _nncf_strip,
        "NNCF fake quantizers (BatchNorm statistics re-estimated, then folded into the convs; "
        "activations per tensor, unsigned where never negative, within 6 after a ReLU6; "
        "a conv's output quantized before an activation other than a ReLU or ReLU6 or "
        "before a norm, but for TensorRT); for ONNX Runtime the classifier an int8 QGemm "
        "(its bias int32, its input dequantized after the Flatten)",
        version=11,
    ),
    # 2: off TensorRT, a Gemm's bias int32 (a BERT pooler's: ONNX Runtime's QGemm)
    "transformer": Scheme(
        _linear_quantize,
        lambda model, args: freeze_weight_scales(model),  # export as Q/DQ with constant scales
        "fake-quantized Linear layers (weights per channel, inputs per tensor; heads float) "
        "and embedding tables (per row)",
        version=2,
    ),
}


def quantize_for_training(
    adapter: ModelAdapter,
    calibration: dict[str, np.ndarray],
    *,
    symmetric_activations: bool,
    tensorrt: bool,
    reduce_range: bool = False,
    batch_size: int = 16,
) -> ModelAdapter:
    """A copy of `adapter` whose module carries INT8 fake quantizers (its family's scheme: symmetric
    weights, 7-bit with `reduce_range` unless for `tensorrt`; activations symmetric when asked),
    ranges calibrated on `calibration`. Train it like any student, then `export_qat`."""
    names = adapter.input_names
    n = len(calibration[names[0]])
    batches = [
        tuple(torch.from_numpy(calibration[k][s : s + batch_size]) for k in names)
        for s in range(0, n, batch_size)
    ]
    model = copy.deepcopy(adapter.module).eval()
    scheme = SCHEMES[adapter.family]
    seven_bit = reduce_range and not tensorrt  # TensorRT: S8S8, no overflow to avoid
    return _with_module(
        adapter,
        scheme.quantize(model, adapter, batches, symmetric_activations, tensorrt, seven_bit),
    )


def non_standard_ops(model: onnx.ModelProto) -> list[str]:
    """Op types outside the default ONNX domain (e.g. NNCF's FakeQuantize)."""
    return sorted(
        {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS}
    )


def export_qat(
    adapter: ModelAdapter,
    example: dict[str, np.ndarray],
    path: Path,
    *,
    opset: int = 17,
    cls_only: bool = False,
    output_name: str = "logits",
    tensorrt: bool = False,
) -> Path:
    """Strip the trained model of training-only modules (its scheme's `strip`) and export a QDQ
    ONNX model of standard ops, weights stored as int8, finished for its engine as PTQ graphs
    are (`finish_qdq`: TensorRT's with `tensorrt`; `cls_only`: as export.cls_only_last_layer)."""
    from kdc.deploy.qdq import finish_qdq
    from kdc.export.onnx_export import export_onnx

    adapter.module.eval()
    args = tuple(torch.from_numpy(example[k][:2]) for k in adapter.input_names)
    stripped = SCHEMES[adapter.family].strip(adapter.module, args)
    out = export_onnx(
        _with_module(adapter, stripped.eval()),
        example,
        path,
        opset=max(opset, 13),
        cls_only=cls_only,
        output_name=output_name,
    )
    model = onnx.load(str(out))
    bad = non_standard_ops(model)
    if bad:
        out.unlink()
        raise UserError(
            f"the quantized model exported non-standard ops {bad}",
            field="quantize.method",
            fix="use quantize.method: ptq",
        )
    if fold_weight_quantizers(model):
        with atomic_path(out) as tmp:
            onnx.save(finish_qdq(model, tensorrt), str(tmp))
    return out
