"""FLOPs, bytes and fusion of kdc.deploy.graph_cost on hand-computable graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from kernel_lists import kernels_from_architecture, kernels_from_onnx
from onnx import TensorProto, helper, numpy_helper
from tiny import exported_bert, tiny_beit, tiny_vit

from kdc.deploy.arch_cost import analyze_architecture
from kdc.deploy.graph_cost import analyze_onnx
from kdc.deploy.kernels import MASKED, MASKED_FLOPS, memory_bytes
from kdc.errors import UserError

F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()]
    g = helper.make_graph(nodes, "g", inputs, outputs, tensors)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def rand(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_single_matmul_flops_and_bytes():
    m = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [vi("x", [1, 4])],
        [vi("y", [1, 8])],
        {"w": rand(4, 8)},
    )
    [k] = kernels_from_onnx(m)
    assert k.flops == 64
    assert k.bytes == (4 + 8 + 32) * 4
    assert k.kind == "gemm" and k.precision == "fp32"


def test_gemm_with_bias_and_transposed_weight():
    m = model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        [vi("x", [2, 4])],
        [vi("y", [2, 3])],
        {"w": rand(3, 4), "b": rand(3)},
    )
    [k] = kernels_from_onnx(m, batch=2)
    assert k.flops == 2 * 2 * 3 * 4 + 2 * 3
    assert k.bytes == (8 + 6 + 12 + 3) * 4


@pytest.mark.parametrize(
    "groups,w_shape,expected",
    [
        (1, (16, 3, 3, 3), 2 * 16 * 64 * 27 + 16 * 64),
        (3, (3, 1, 3, 3), 2 * 3 * 64 * 9 + 3 * 64),
    ],
)
def test_conv_flops_dense_and_depthwise(groups, w_shape, expected):
    cout = w_shape[0]
    m = model(
        [
            helper.make_node(
                "Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=groups
            )
        ],
        [vi("x", [1, 3, 8, 8])],
        [vi("y", [1, cout, 8, 8])],
        {"w": rand(*w_shape), "b": rand(cout)},
    )
    [k] = kernels_from_onnx(m)
    assert k.flops == expected
    assert k.kind == "conv"


def test_conv_bn_relu_is_one_kernel():
    c = 4
    m = model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"]),
            helper.make_node("Relu", ["n"], ["y"]),
        ],
        [vi("x", [1, 3, 8, 8])],
        [vi("y", [1, c, 8, 8])],
        {
            "w": rand(c, 3, 3, 3),
            "s": rand(c),
            "bb": rand(c),
            "mu": rand(c),
            "var": np.ones(c, np.float32),
        },
    )
    [k] = kernels_from_onnx(m)
    assert k.ops == ("Conv", "BatchNormalization", "Relu")
    out = c * 64
    assert k.flops == 2 * out * 27 + 2 * out + out
    assert k.bytes == (3 * 64 + out + c * 27 + 4 * c) * 4  # intermediates never leave the kernel


def test_matmul_add_gelu_is_one_kernel():
    m = model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["a"]),
            helper.make_node("Gelu", ["a"], ["y"]),
        ],
        [vi("x", [2, 8])],
        [vi("y", [2, 16])],
        {"w": rand(8, 16), "b": rand(16)},
        opset=20,
    )
    [k] = kernels_from_onnx(m, batch=2)
    assert k.ops == ("MatMul", "Add", "Gelu")
    assert k.flops == 2 * 2 * 8 * 16 + 32 + 8 * 32


def _qdq_matmul() -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    inits = {
        "sx": np.float32(0.1),
        "zx": np.int8(0),
        "sw": np.float32(0.05),
        "zw": np.int8(0),
        "wq": np.ones((16, 32), np.int8),
    }
    return model(nodes, [vi("x", [4, 16])], [vi("y", [4, 32])], inits)


def test_qdq_around_matmul_is_one_int8_kernel():
    [k] = kernels_from_onnx(_qdq_matmul(), batch=4, precision="fp32")
    assert k.precision == "int8"
    assert k.flops == 2 * 4 * 16 * 32
    assert k.bytes == 4 * 16 + 4 * 32 + 16 * 32  # one byte per element


def test_decomposed_layernorm_is_one_kernel():
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["ng"]),
        helper.make_node("Add", ["ng", "beta"], ["y"]),
    ]
    m = model(
        nodes,
        [vi("x", [2, 8])],
        [vi("y", [2, 8])],
        {"two": np.float32(2), "eps": np.float32(1e-5), "gamma": rand(8), "beta": rand(8)},
    )
    [k] = kernels_from_onnx(m, batch=2)
    assert k.kind == "norm" and len(k.ops) == 9
    assert k.bytes == (16 + 16 + 1 + 1 + 8 + 8) * 4


def test_attention_block_is_one_kernel():
    b, h, s, d = 1, 2, 4, 8
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["sc"]),
        helper.make_node("Div", ["sc", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "mask"], ["sm"]),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["y"], perm=[0, 2, 1, 3]),
    ]
    m = model(
        nodes,
        [
            vi("q", [b, h, s, d]),
            vi("k", [b, h, s, d]),
            vi("v", [b, h, s, d]),
            vi("mask", [b, 1, 1, s]),
        ],
        [vi("y", [b, s, h, d])],
        {"scale": np.float32(np.sqrt(d))},
    )
    [k] = kernels_from_onnx(m)
    assert k.kind == "attention" and len(k.ops) == 7
    assert k.flops == 4 * b * h * s * s * d + 2 * b * h * s * s + 5 * b * h * s * s
    assert analyze_onnx(m).kernels[0].scores == b * h * s * s
    # padding: a masked-score pseudo-kernel per attention kernel, fp32, no bytes
    k, masked = kernels_from_onnx(m, padding=0.25)
    assert masked.kind == MASKED and masked.bytes == 0 and masked.precision == "fp32"
    assert masked.flops == b * h * s * s * 0.25 * MASKED_FLOPS
    with pytest.raises(UserError, match="padding"):
        kernels_from_onnx(m, padding=1.0)


def test_shape_arithmetic_costs_nothing():
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
        helper.make_node("Concat", ["bu", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    m = model(
        nodes,
        [vi("x", ["batch", 2, 3])],
        [vi("y", ["batch", 6])],
        {"zero": np.int64(0), "ax": np.array([0], np.int64), "minus1": np.array([-1], np.int64)},
    )
    ks = kernels_from_onnx(m, batch=5)
    assert [k.ops for k in ks] == [("Relu",)]
    assert ks[0].flops == 30


def test_dynamic_dims_need_input_shapes():
    m = model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [vi("x", ["batch", "seq"])],
        [vi("y", ["batch", "seq"])],
    )
    with pytest.raises(UserError, match="dynamic dimension 1"):
        analyze_onnx(m)
    with pytest.raises(UserError, match="input_shapes names"):
        analyze_onnx(m, input_shapes={"ids": [1, 4]})
    cost = analyze_onnx(m, batch=3, input_shapes={"x": [1, 4]})
    assert cost.input_shapes == {"x": [3, 4]}  # dim 0 is the batch
    assert cost.kernels[0].flops == 12


def test_fixed_batch_conflict_is_a_user_error():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    with pytest.raises(UserError, match="fixed dim 0"):
        analyze_onnx(m, batch=2)


def test_precision_widths_and_memory():
    m = model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["y"]),
            helper.make_node("Softmax", ["y"], ["z"]),
        ],
        [vi("x", [4, 64])],
        [vi("z", [4, 64])],
        {"w": rand(64, 64)},
    )
    fp32, fp16, int8 = (
        kernels_from_onnx(m, batch=4, precision=p) for p in ("fp32", "fp16", "int8")
    )
    assert [k.bytes for k in fp16] == [k.bytes / 2 for k in fp32]
    assert [k.precision for k in int8] == ["int8", "fp16"]  # only the GEMM runs at int8
    cost = analyze_onnx(m, batch=4)
    assert memory_bytes(cost, "fp32") == 64 * 64 * 4 + cost.peak_act_elems * 4
    assert memory_bytes(cost, "int8") == 64 * 64 + cost.peak_act_elems * 2


def test_structure_cache_distinguishes_shapes():
    m = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [vi("x", ["b", 4])],
        [vi("y", ["b", 8])],
        {"w": rand(4, 8)},
    )
    assert kernels_from_onnx(m, batch=1)[0].flops * 3 == kernels_from_onnx(m, batch=3)[0].flops


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return exported_bert(
        tmp_path_factory.mktemp("bert") / "bert.onnx",
        seq=16,
        vocab_size=500,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )


def test_exported_bert_fuses_like_the_architecture_path(tiny_bert):
    path, arch = tiny_bert
    shapes = {"input_ids": [2, 16], "attention_mask": [2, 16]}
    onnx_k = kernels_from_onnx(path, batch=2, input_shapes=shapes)
    arch_k = kernels_from_architecture(arch, 2, shapes)

    def kinds(ks):
        return sorted(k.kind for k in ks)

    assert kinds(onnx_k) == kinds(arch_k)
    assert sum(k.kind == "attention" for k in onnx_k) == 2
    assert sum(k.flops for k in arch_k) == pytest.approx(sum(k.flops for k in onnx_k), rel=0.01)
    assert sum(k.bytes for k in arch_k) == pytest.approx(sum(k.bytes for k in onnx_k), rel=0.02)
    onnx_m = kernels_from_onnx(path, batch=2, input_shapes=shapes, padding=0.5)
    arch_m = kernels_from_architecture(arch, 2, shapes, padding=0.5)
    masked = [sum(k.flops for k in ks if k.kind == MASKED) for ks in (onnx_m, arch_m)]
    assert masked[0] == masked[1] == 2 * 2 * 4 * 16 * 16 * 0.5 * MASKED_FLOPS


def test_cnn_architecture_matches_exported_cnn(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2, 2, 0),
        nn.Conv2d(8, 16, 3, 1, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        input_names=["pixel_values"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"pixel_values": {0: "b"}, "logits": {0: "b"}},
    )
    arch = {
        "family": "cnn",
        "layers": [
            {"op": "conv", "out": 8, "kernel": 3, "stride": 2},
            {"op": "maxpool", "kernel": 2, "stride": 2, "padding": 0},
            {"op": "conv", "out": 16, "kernel": 3},
            {"op": "global_pool"},
            {"op": "linear", "out": 10},
        ],
    }
    shapes = {"pixel_values": [4, 3, 32, 32]}
    onnx_k = kernels_from_onnx(path, batch=4, input_shapes=shapes)
    arch_k = kernels_from_architecture(arch, 4, shapes)
    assert [k.kind for k in onnx_k] == [k.kind for k in arch_k]
    for a, o in zip(arch_k, onnx_k, strict=True):
        assert a.flops == pytest.approx(o.flops, rel=0.01)
        assert a.bytes == pytest.approx(o.bytes, rel=0.01)


def test_architecture_errors_name_the_field():
    with pytest.raises(UserError, match="family"):
        analyze_architecture({"family": "rnn"})
    with pytest.raises(UserError, match="sequence length"):
        analyze_architecture({"num_hidden_layers": 2, "hidden_size": 32})
    with pytest.raises(UserError, match="input shape"):
        analyze_architecture({"family": "cnn", "layers": []})


def test_ort_fused_ops_are_costed_like_their_standard_twins():
    nodes = [
        helper.make_node(
            "FusedConv",
            ["x", "w", "b"],
            ["c"],
            domain="com.microsoft",
            activation="Relu",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node(
            "FusedGemm", ["f", "g"], ["y"], domain="com.microsoft", activation="Relu", transB=1
        ),
    ]
    m = model(
        nodes,
        [vi("x", ["batch", 3, 8, 8])],
        [vi("y", ["batch", 10])],
        {"w": rand(4, 3, 3, 3), "b": rand(4), "g": rand(10, 256)},
    )
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    cost = analyze_onnx(m, batch=2)
    assert cost.unknown_shapes == 0
    conv, gemm = cost.kernels
    assert conv.kind == "conv" and conv.flops == 2 * 2 * 4 * 64 * 27 + 2 * 2 * 4 * 64
    assert gemm.kind == "gemm" and gemm.flops == 2 * 2 * 256 * 10 + 2 * 10


def test_shape_arithmetic_folds_beside_quantize_dequantize():
    """ORT's QDQ models put DequantizeLinear (opset < 19) next to the shape arithmetic of a
    dynamic sequence; folding must not give up on the whole graph because of it."""
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Gather", ["sh", "one"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["nu"]),
        helper.make_node("Slice", ["table", "start", "nu", "ax1"], ["pos"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["bias"]),
        helper.make_node("Add", ["pos", "bias"], ["pb"]),
        helper.make_node("Add", ["x", "pb"], ["y"]),
    ]
    m = model(
        nodes,
        [vi("x", ["batch", "seq"])],
        [vi("y", ["batch", "seq"])],
        {
            "one": np.int64(1),
            "ax": np.array([0], np.int64),
            "ax1": np.array([1], np.int64),
            "start": np.array([0], np.int64),
            "table": rand(1, 64),
            "q": np.array([3], np.int8),
            "scale": np.float32(0.5),
            "zp": np.int8(0),
        },
        opset=13,
    )
    cost = analyze_onnx(m, batch=1, input_shapes={"x": [1, 16]})
    assert cost.unknown_shapes == 0
    assert [k.flops for k in cost.kernels] == [16]


@pytest.mark.parametrize(
    ("kind", "tokens"), [("vit", (1, 1)), ("deit", (2, 1)), ("deit-teacher", (2, 2))]
)
def test_vit_architecture_matches_exported_vit(tmp_path, kind, tokens):
    """A vision transformer's architecture dict (patch Conv, [CLS] and position embeddings, no
    mask, final LayerNorm, no pooler) costs what its torch.onnx export does; DeiT's distillation
    token lengthens the sequence, and its WithTeacher head gathers it into a second classifier
    whose logits are averaged with the first's."""
    from kdc.export.onnx_export import export_onnx
    from kdc.models.hf_image import HFImageAdapter

    vit = tiny_vit([str(i) for i in range(10)], channels=1, hidden=64, layers=2, heads=4, kind=kind)
    adapter = HFImageAdapter(vit.eval())
    x = adapter.encode(np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32))
    export_onnx(adapter, x, tmp_path / "vit.onnx")
    shapes = {"pixel_values": [2, 1, 8, 8]}
    onnx_k = kernels_from_onnx(tmp_path / "vit.onnx", batch=2, input_shapes=shapes)
    arch = adapter.architecture()
    assert (arch["special_tokens"], arch["classifier_tokens"]) == tokens
    arch_k = kernels_from_architecture(arch, 2, shapes)
    assert sorted(k.kind for k in onnx_k) == sorted(k.kind for k in arch_k)
    assert sum(k.kind == "attention" for k in arch_k) == 2
    assert sum(k.flops for k in arch_k) == pytest.approx(sum(k.flops for k in onnx_k), rel=0.01)
    assert sum(k.bytes for k in arch_k) == pytest.approx(sum(k.bytes for k in onnx_k), rel=0.02)
    assert analyze_architecture(arch, batch=2).input_shapes == shapes


@pytest.mark.parametrize("relative", [False, True])
def test_beit_architecture_matches_exported_beit(tmp_path, relative):
    """BEiT (absolute or relative positions, layer scale) reads the mean of its patch tokens
    through a LayerNorm instead of a final LayerNorm and [CLS]: the architecture costs that
    graph (it counted a final LN over every token and no mean)."""
    from kdc.export.onnx_export import export_onnx
    from kdc.models.hf_image import HFImageAdapter

    model = tiny_beit(hidden=64, heads=4, labels=10, relative=relative)
    adapter = HFImageAdapter(model)
    x = adapter.encode(np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32))
    export_onnx(adapter, x, tmp_path / "beit.onnx")
    shapes = {"pixel_values": [2, 1, 8, 8]}
    onnx_k = kernels_from_onnx(tmp_path / "beit.onnx", batch=2, input_shapes=shapes)
    arch = adapter.architecture()
    assert arch["pooling"] == "mean" and arch["special_tokens"] == 1
    arch_k = kernels_from_architecture(arch, 2, shapes)
    assert sorted(k.kind for k in onnx_k) == sorted(k.kind for k in arch_k)
    assert sum(k.flops for k in arch_k) == pytest.approx(sum(k.flops for k in onnx_k), rel=0.01)
    assert sum(k.bytes for k in arch_k) == pytest.approx(sum(k.bytes for k in onnx_k), rel=0.02)


def test_vit_architecture_without_its_geometry_is_a_user_error():
    """`patch_size` makes a vision transformer: without num_channels and image_size (nor
    pixel_values shapes), a UserError naming the architecture, not a KeyError."""
    arch = {"family": "transformer", "num_hidden_layers": 2, "hidden_size": 64, "patch_size": 2}
    with pytest.raises(UserError, match="num_channels") as e:
        analyze_architecture(arch, batch=1)
    assert e.value.field == "architecture"
    shapes = {"pixel_values": [1, 1, 8, 8]}
    assert analyze_architecture(arch, batch=1, input_shapes=shapes).input_shapes == shapes
