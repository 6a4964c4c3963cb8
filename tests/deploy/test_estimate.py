"""The roofline-v1 latency model: prediction objects, monotonicity, precision, fitting."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from tiny import exported_bert

from kdc.deploy.estimate import (
    explain_table,
    fit_latency_model,
    predict_architecture,
    predict_kernels_ms,
    predict_memory_mb,
    predict_onnx,
)
from kdc.deploy.kernels import MASKED, Kernel
from kdc.errors import UserError
from kdc.profiles import HardwareProfile, load_profile


@pytest.fixture(scope="module")
def t4() -> HardwareProfile:
    return load_profile("nvidia-t4")


def mlp(depth: int, width: int, batch: int = 1) -> onnx.ModelProto:
    """`depth` × (MatMul + Add + Relu) of `width` units on a width-wide input."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        inits += [
            numpy_helper.from_array(rng.standard_normal((width, width), np.float32), f"w{i}"),
            numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"h{i}"]),
        ]
        x = f"h{i}"
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["b", width])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_prediction_is_a_predicted_latency_object(t4):
    pred = predict_onnx(mlp(2, 64), t4, precision="fp16", batch=4)
    assert pred["kind"] == "predicted" and pred["model"] == "roofline-v1"
    assert pred["calibrated_from"] == t4.latency_model.source
    assert pred["target"] == "nvidia-t4" and pred["precision"] == "fp16" and pred["batch"] == 4
    assert pred["input_shape"] == {"x": [4, 64]}
    assert pred["kernels"] == 2
    assert pred["flops"] == 2 * (2 * 4 * 64 * 64 + 2 * 4 * 64)
    assert pred["p50_ms"] > 2 * t4.latency_model.kernel_overhead_us / 1e3
    assert "breakdown" not in pred


def test_latency_grows_with_depth_and_width(t4):
    by_depth = [predict_onnx(mlp(d, 256), t4, batch=64)["p50_ms"] for d in (1, 2, 4, 8)]
    by_width = [predict_onnx(mlp(2, w), t4, batch=64)["p50_ms"] for w in (64, 256, 1024, 2048)]
    assert by_depth == sorted(by_depth) and len(set(by_depth)) == 4
    assert by_width == sorted(by_width) and len(set(by_width)) == 4


def test_int8_beats_fp16_beats_fp32_when_compute_bound(t4):
    model = mlp(2, 2048)
    ms = {
        p: predict_onnx(model, t4, precision=p, batch=512, explain=True)
        for p in ("fp32", "fp16", "int8")
    }
    assert ms["int8"]["p50_ms"] < ms["fp16"]["p50_ms"] < ms["fp32"]["p50_ms"]
    gemm = next(r for r in ms["fp32"]["breakdown"] if r["group"] == "gemm")
    assert gemm["bound"] == "compute"


def test_explain_breakdown_adds_up_and_renders(t4):
    pred = predict_onnx(mlp(3, 128), t4, batch=1, explain=True)
    rows = pred["breakdown"]
    assert sum(r["count"] for r in rows) == pred["kernels"]
    assert sum(r["ms"] for r in rows) == pytest.approx(pred["p50_ms"], rel=1e-3)
    assert {r["bound"] for r in rows} <= {"compute", "memory", "overhead"}
    assert rows[0]["bound"] == "overhead"  # three tiny kernels: launch cost dominates
    console = Console(record=True, width=120)
    console.print(explain_table(pred))
    assert "gemm" in console.export_text()


def test_roofline_per_kernel(t4):
    lm = {"kernel_overhead_us": 5.0, "compute_efficiency": 0.5, "memory_efficiency": 0.5}
    big = Kernel("k", ("MatMul",), 8.1e12 * 1e-3, 1.0, "fp32", "gemm")  # 1 ms at peak
    wide = Kernel("k", ("Add",), 1.0, 320e9 * 1e-3, "fp32", "pointwise")  # 1 ms at bandwidth
    assert predict_kernels_ms([big], t4, lm) == pytest.approx(2.0 + 0.005)
    assert predict_kernels_ms([wide], t4, lm) == pytest.approx(2.0 + 0.005)
    assert predict_kernels_ms([big, wide], t4, lm) == pytest.approx(4.01)


def test_unsupported_precision_and_batch_are_user_errors(t4):
    host_like = t4.model_copy(
        update={"runtime": t4.runtime.model_copy(update={"precisions": ["fp32", "int8"]})}
    )
    with pytest.raises(UserError, match="does not run fp16"):
        predict_onnx(mlp(1, 8), host_like, precision="fp16")
    with pytest.raises(UserError, match="batch"):
        predict_onnx(mlp(1, 8), t4, batch=0)


def test_memory_prediction_shrinks_with_precision():
    model = mlp(2, 256)
    fp32 = predict_memory_mb(model, "fp32", 1)
    int8 = predict_memory_mb(model, "int8", 1)
    weights_mb = 2 * (256 * 256 + 256) * 4 / 2**20
    assert weights_mb < fp32 < weights_mb * 1.05
    assert int8 < fp32 / 3


def _synthetic_kernels(rng: np.random.Generator, n: int) -> list[Kernel]:
    out = []
    for i in range(n):
        kind = ("gemm", "pointwise", "attention")[i % 3]
        flops = float(10 ** rng.uniform(5, 11)) if kind != "pointwise" else 1e4
        out.append(
            Kernel(
                f"k{i}",
                ("Op",),
                flops,
                float(10 ** rng.uniform(4, 8)),
                ("fp32", "int8")[i % 2],
                kind,
            )
        )
    return out


def test_fit_recovers_known_factors(t4):
    truth = {
        "kernel_overhead_us": 7.0,
        "compute_efficiency": 0.45,
        "memory_efficiency": 0.7,
        "int8_compute_efficiency": 0.25,
    }
    rng = np.random.default_rng(1)
    samples = []
    for _ in range(40):
        ks = _synthetic_kernels(rng, int(rng.integers(3, 60)))
        samples.append((ks, predict_kernels_ms(ks, t4, truth)))
    fit, _ = fit_latency_model(samples, t4)
    for name, value in truth.items():
        assert fit[name] == pytest.approx(value, rel=0.05), name
    assert "fitted" in fit["source"]
    t4.latency_model.model_validate(fit)  # a valid profile latency_model


def test_per_kind_fit_recovers_kind_efficiencies(t4):
    truth = {
        "kernel_overhead_us": 4.0,
        "compute_efficiency": 0.45,
        "memory_efficiency": 0.7,
        "int8_compute_efficiency": 0.3,
        "kind_efficiency": {"fp32_conv": 0.6, "int8_conv": 0.2, "int8_attention": 0.05},
    }
    rng = np.random.default_rng(2)
    kinds = ("gemm", "conv", "attention")
    samples = []
    for _ in range(60):
        ks = [
            Kernel(
                f"k{i}",
                ("Op",),
                float(10 ** rng.uniform(7, 11)),
                1e4,
                ("fp32", "int8")[i % 2],
                kinds[i % 3],
            )
            for i in range(int(rng.integers(2, 12)))
        ]
        samples.append((ks, predict_kernels_ms(ks, t4, truth)))
    fit, _ = fit_latency_model(samples, t4, per_kind=True)
    assert fit["kind_efficiency"]["fp32_conv"] == pytest.approx(0.6, rel=0.02)
    assert fit["kind_efficiency"]["int8_conv"] == pytest.approx(0.2, rel=0.02)
    assert fit["kind_efficiency"]["int8_attention"] == pytest.approx(0.05, rel=0.02)
    assert fit["kind_efficiency"]["fp32_attention"] == pytest.approx(0.45, rel=0.02)
    assert fit["int8_compute_efficiency"] == pytest.approx(0.3, rel=0.02)
    t4.latency_model.model_validate(fit)
    assert "kind_efficiency" not in fit_latency_model(samples, t4)[0]  # off by default


def test_kind_efficiency_falls_back_to_the_class_efficiency(t4):
    conv = Kernel("c", ("Conv",), 8.1e9, 1.0, "fp32", "conv")  # 1 ms at the fp32 peak
    norm = Kernel("n", ("LayerNormalization",), 8.1e9, 1.0, "fp32", "norm")
    base = {"kernel_overhead_us": 0.0, "compute_efficiency": 0.5, "memory_efficiency": 0.5}
    assert predict_kernels_ms([conv, norm], t4, base) == pytest.approx(4.0)
    kinds = {**base, "kind_efficiency": {"fp32_conv": 0.25, "fp32_vector": 1.0}}
    assert predict_kernels_ms([conv], t4, kinds) == pytest.approx(4.0)
    assert predict_kernels_ms([norm], t4, kinds) == pytest.approx(1.0)


def test_masked_scores_cost_only_where_calibrated(t4):
    att = Kernel("a", ("Softmax",), 8.1e9, 1.0, "fp32", "attention")
    masked = Kernel("a/masked", ("Softmax",), 8.1e9, 0.0, "fp32", MASKED)
    base = {"kernel_overhead_us": 10.0, "compute_efficiency": 0.5, "memory_efficiency": 0.5}
    # an engine calibrated without padded inputs: masked scores are free, and never a launch
    assert predict_kernels_ms([att, masked], t4, base) == predict_kernels_ms([att], t4, base)
    lm = {**base, "kind_efficiency": {"fp32_masked": 0.25}}
    extra = predict_kernels_ms([att, masked], t4, lm) - predict_kernels_ms([att], t4, lm)
    assert extra == pytest.approx(4.0)
    assert predict_kernels_ms([att], t4, {**lm, "call_overhead_us": 500.0}) == pytest.approx(
        predict_kernels_ms([att], t4, lm) + 0.5
    )


def test_per_kind_fit_recovers_masked_efficiency_and_call_overhead(t4):
    truth = {
        "kernel_overhead_us": 2.0,
        "call_overhead_us": 30.0,
        "compute_efficiency": 0.5,
        "memory_efficiency": 0.6,
        "kind_efficiency": {"fp32_masked": 0.05},
    }
    rng = np.random.default_rng(3)
    samples = []
    for _ in range(40):
        n = int(rng.integers(1, 8))
        ks = [
            Kernel(f"k{i}", ("Op",), float(10 ** rng.uniform(6, 10)), 1e4, "fp32") for i in range(n)
        ]
        if rng.random() < 0.5:
            ks.append(
                Kernel("m", ("Softmax",), float(10 ** rng.uniform(6, 9)), 0.0, "fp32", MASKED)
            )
        samples.append((ks, predict_kernels_ms(ks, t4, truth)))
    fit, _ = fit_latency_model(samples, t4, per_kind=True)
    assert fit["call_overhead_us"] == pytest.approx(30.0, rel=0.02)
    # without per-kind efficiencies the masked slot is still its own (it is free unfitted)
    plain, _ = fit_latency_model([(k, ms - 0.03) for k, ms in samples], t4)
    assert plain["kind_efficiency"]["fp32_masked"] == pytest.approx(0.05, rel=0.02)
    assert fit["kernel_overhead_us"] == pytest.approx(2.0, rel=0.05)
    assert fit["kind_efficiency"]["fp32_masked"] == pytest.approx(0.05, rel=0.02)
    t4.latency_model.model_validate(fit)


def test_prediction_at_padding_records_it(tiny_bert):
    path, _ = tiny_bert
    host = load_profile("host")
    shapes = {"input_ids": [1, 32], "attention_mask": [1, 32]}

    def with_kinds(kinds):
        lm = host.latency_model.model_copy(update={"kind_efficiency": kinds})
        return host.model_copy(update={"latency_model": lm})

    calibrated, plain = with_kinds({"fp32_masked": 0.1}), with_kinds(None)
    full = predict_onnx(path, calibrated, input_shapes=shapes)
    padded = predict_onnx(path, calibrated, input_shapes=shapes, padding=0.5)
    assert full["padding"] == 0.0 and padded["padding"] == 0.5
    assert padded["p50_ms"] > full["p50_ms"]
    unpadded = predict_onnx(path, plain, input_shapes=shapes)["p50_ms"]
    assert predict_onnx(path, plain, input_shapes=shapes, padding=0.5)["p50_ms"] == unpadded


def test_fit_needs_samples(t4):
    with pytest.raises(UserError, match="at least 2"):
        fit_latency_model([], t4)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return exported_bert(
        tmp_path_factory.mktemp("bert") / "bert.onnx",
        seq=32,
        vocab_size=800,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        num_labels=2,
    )


@pytest.mark.parametrize(
    "target,precision,batch",
    [
        ("nvidia-t4", "int8", 1),
        ("jetson-orin-nano-8gb", "fp16", 8),
        ("nvidia-a100-80gb-sxm", "fp32", 32),
    ],
)
def test_architecture_path_agrees_with_onnx(tiny_bert, target, precision, batch):
    path, arch = tiny_bert
    profile = load_profile(target)
    shapes = {"input_ids": [batch, 32], "attention_mask": [batch, 32]}
    a = predict_architecture(arch, profile, precision=precision, batch=batch, input_shapes=shapes)
    o = predict_onnx(path, profile, precision=precision, batch=batch, input_shapes=shapes)
    assert a["p50_ms"] == pytest.approx(o["p50_ms"], rel=0.15)
    assert a["kernels"] == o["kernels"]
    assert a["flops"] == pytest.approx(o["flops"], rel=0.02)


def test_estimate_takes_a_quantized_graph_as_int8(tmp_path):
    """`kdc estimate` without --precision: int8 for a quantized graph, fp32 otherwise."""
    from onnxruntime.quantization import quantize_dynamic

    from kdc import tools

    onnx.save(mlp(2, 64), tmp_path / "fp32.onnx")
    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"))
    assert tools.estimate(tmp_path / "fp32.onnx", "nvidia-t4")["precision"] == "fp32"
    assert tools.estimate(tmp_path / "int8.onnx", "nvidia-t4")["precision"] == "int8"
    assert tools.estimate(tmp_path / "int8.onnx", "nvidia-t4", precision="fp16")["precision"] == (
        "fp16"
    )


def test_the_estimate_command_prints_the_predictions_warnings(tiny_bert):
    """Inputs longer than the model's 64 positions (the default 1x128): shapes go uninferred
    and are costed as empty, a prediction too low; `kdc estimate` printed it without the
    warning the prediction carries."""
    from typer.testing import CliRunner

    from kdc.cli import app

    path, _ = tiny_bert
    res = CliRunner().invoke(app, ["estimate", str(path), "--target", "t4"])
    assert res.exit_code == 0 and "ms predicted" in res.output, res.output
    assert "warning: " in res.output and "no inferred shape" in res.output, res.output
    res = CliRunner().invoke(
        app, ["estimate", str(path), "--target", "t4", "--shape", "input_ids:1x32"]
    )
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    assert "input_ids:1x32" in res.output  # shapes written as kdc bench writes them
