"""Quantization-aware training: a CNN through NNCF, a transformer through fake-quantized Linear
layers; each trains with the KD losses (feature taps included) and exports a QDQ ONNX model of
standard ops that ONNX Runtime runs as the fake-quantized PyTorch model computed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_distill import FEATURE_LOSSES, _cfg, cnn, toy_data
from test_fold_bn import pruned_depthwise_student
from tiny import config_of, optimized_ops, run_onnx, tiny_text_adapter

from kdc.compress.distill import distill
from kdc.compress.fake_quant import (
    QuantEmbedding,
    QuantLinear,
    fold_weight_quantizers,
    freeze_weight_scales,
    quantize_layers,
)
from kdc.compress.hooks import find_taps
from kdc.compress.qat import export_qat, non_standard_ops, quantize_for_training
from kdc.deploy.onnxruntime import make_session


def _int8_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The int8 initializers of `model` with two or more axes (its folded weights)."""
    return {
        t.name: onnx.numpy_helper.to_array(t).astype(int)
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2
    }


def test_cnn_qat_exports_standard_qdq_onnx(tmp_path):
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    student = cnn((8, 16), 0)  # starts from the teacher's weights, as derived students do
    q = quantize_for_training(student, data.train, symmetric_activations=True, tensorrt=True)
    assert q.module is not student.module  # the float student is left untouched
    res = distill(q, data, _cfg(epochs=1, losses=[{"name": "logits"}]), 0, teacher=teacher)
    assert len(res.history) == 1 and res.history[0]["loss"] is not None
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert non_standard_ops(model) == [] and "FakeQuantize" not in ops
    weights = [t for t in model.graph.initializer if len(t.dims) >= 2]  # conv kernels, the Gemm's
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)  # folded
    # with Q/DQ in float, as kdc runs a TensorRT graph here: this CPU's S8S8 int8 kernels may
    # saturate (no VNNI), which TensorRT's do not
    sess = make_session(path, threads=1, optimization="disable")
    got = sess.run(None, data.val)[0]
    ref = q.forward_numpy(data.val)  # the fake-quantized PyTorch model it was exported from
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("student", ["small-cnn", "pruned-depthwise"])
def test_cnn_qat_graph_runs_every_conv_as_an_int8_conv_in_onnx_runtime(tmp_path, student):
    """Each BatchNorm is folded into its conv before fake quantization: the QAT graph has no
    BatchNormalization, and ONNX Runtime's optimised graph (ORT_ENABLE_ALL, as the INT8 engine
    runs on a CPU) makes every conv an int8 QLinearConv. A BatchNormalization between a conv
    and its output quantizer had kept the conv in float (the digits QAT engine ran at 0.4x its
    FP32 engine's speed)."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    float_student = (
        cnn((8, 16), 0)
        if student == "small-cnn"
        else pruned_depthwise_student(data.train["pixel_values"][:2])
    )
    q = quantize_for_training(
        float_student, data.train, symmetric_activations=False, tensorrt=False
    )
    distill(q, data, _cfg(epochs=1, losses=[{"name": "logits"}]), 0, teacher=teacher)
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in float_student.module.modules())
    assert "BatchNormalization" not in ops and ops.count("Conv") == convs
    optimized = optimized_ops(path, tmp_path / "optimized.onnx")
    assert optimized.count("QLinearConv") == convs, optimized
    assert not {"Conv", "FusedConv"} & set(optimized)  # no float conv left
    # int8 kernels against the fake-quantized model: a rounding step apart at most
    np.testing.assert_allclose(run_onnx(path, data.val), q.forward_numpy(data.val), atol=2e-2)


def test_cnn_qat_keeps_relu_outputs_unsigned_so_onnx_runtime_fuses_every_conv(tmp_path):
    """An activation whose calibration saw no negative value (a ReLU's output) keeps zero point 0
    through QAT: trained free (lr 0.01, a feature loss), its lower bound drifted below 0 (zero
    point 2), so ONNX Runtime kept the Relu before its QuantizeLinear and ran that conv as a
    float FusedConv. The image input, signed, keeps its asymmetric range."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    q = quantize_for_training(
        cnn((8, 16), 0), data.train, symmetric_activations=False, tensorrt=False
    )
    cfg = _cfg(epochs=5, lr=0.01, losses=[{"name": "logits"}, {"name": "hidden"}])
    distill(q, data, cfg, 0, teacher=teacher)
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    graph = onnx.load(str(path)).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    zero_points = [
        (made_by.get(n.input[0], "input"), int(init[n.input[2]]))
        for n in graph.node
        if n.op_type == "QuantizeLinear"
    ]
    assert [op for op, _ in zero_points] == ["input", "Relu", "Relu", "GlobalAveragePool"]
    assert zero_points[0][1] > 0 and {zp for _, zp in zero_points[1:]} == {0}, zero_points
    optimized = optimized_ops(path, tmp_path / "optimized.onnx")
    assert optimized.count("QLinearConv") == 2 and not {"Conv", "FusedConv"} & set(optimized)
    np.testing.assert_allclose(run_onnx(path, data.val), q.forward_numpy(data.val), atol=2e-2)


def _tapped_layers(adapter, network: torch.nn.Module, example) -> dict[str, str | None]:
    """Each hidden/pooled tap of `adapter` by the name of its layer in `network`."""
    names = {m: n for n, m in network.named_modules()}
    taps = find_taps(adapter, example, ("hidden", "pooled"))
    return {tap: names.get(t.module) for tap, t in taps.items()}


def test_cnn_qat_taps_the_layers_the_float_student_taps():
    """NNCF keeps its quantizers in a hook storage beside the network, under QAT's root: the
    feature taps stay the float student's stage outputs. A conv's weight quantizer (its output a
    4-D weight, 3x3 'spatial') had been tapped as one more feature map: size mismatch."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    student = cnn((8, 16), 0)
    q = quantize_for_training(student, data.train, symmetric_activations=False, tensorrt=False)
    example = {k: v[:2] for k, v in data.train.items()}
    float_taps = _tapped_layers(student, student.module, example)
    assert float_taps == {"hidden0": "features.2", "hidden1": "features", "pooled": "classifier"}
    assert _tapped_layers(q, q.module.net, example) == float_taps


def test_cnn_qat_with_a_feature_loss_compresses_end_to_end(cnn_project, tmp_path):
    """A CNN distilled and trained fake-quantized with the hidden (feature map) loss: QAT trains
    it (it failed on a size mismatch) and its Q/DQ graph ships as the INT8 engine."""
    from tiny import write_yaml

    from kdc import api

    cfg = config_of(cnn_project)
    cfg["distill"].update(epochs=2, losses=["logits", "hidden"])
    cfg["quantize"].update(method="qat", qat_epochs=1)
    path = write_yaml(tmp_path / "model.yaml", cfg)
    report = api.compress(path, "host", tmp_path / "run", quiet=True)
    history = (tmp_path / "run" / "distill" / "qat_history.jsonl").read_text().splitlines()
    assert set(json.loads(history[-1])["losses"]) == {"logits", "hidden"}
    int8 = next(e for e in report["engines"] if e["precision"] == "int8")
    assert int8["quantization"]["method"] == "qat" and int8["status"] == "built"
    assert int8["accuracy"]["accuracy"] > 0.5


@pytest.mark.parametrize(
    ("reduce_range", "tensorrt", "seven_bit"),
    [(True, False, True), (False, False, False), (True, True, False)],  # TensorRT: never
)
def test_cnn_qat_trains_and_exports_7_bit_weights_where_asked(
    tmp_path, reduce_range, tensorrt, seven_bit
):
    """With reduce_range every conv and linear weight of the exported graph is within ±63 after
    training (NNCF's OverflowFix.ENABLE alone only widened the initial scales, which training
    learnt back: ±88 after one epoch), and ONNX Runtime computes what the fake-quantized model
    does; without it, or for TensorRT, the weights use the 8-bit range."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    q = quantize_for_training(
        cnn((8, 16), 0),
        data.train,
        symmetric_activations=False,  # ONNX Runtime's U8S8, as on CPUs
        tensorrt=tensorrt,
        reduce_range=reduce_range,
    )
    distill(q, data, _cfg(epochs=1, losses=[{"name": "logits"}]), 0, teacher=teacher)
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    weights = _int8_weights(onnx.load(str(path)))
    assert len(weights) == 3  # two convs and the classifier
    top = max(int(abs(w).max()) for w in weights.values())
    assert top <= 63 if seven_bit else top > 64
    ref = q.forward_numpy(data.val)
    exact = make_session(path, threads=1, optimization="disable")  # Q/DQ in float
    np.testing.assert_allclose(exact.run(None, data.val)[0], ref, atol=1e-4)
    if seven_bit:  # this CPU's int8 convs, which saturate on 8-bit weights without VNNI: a
        # rounding step apart (3e-4 on an AVX2 EPYC)
        np.testing.assert_allclose(run_onnx(path, data.val), ref, atol=2e-3)


def _text_data(adapter, n: int = 64, seed: int = 0):
    """Two learnable classes of tokenised sentences (the tiny BERT's test words)."""
    from test_distill import DistillData
    from tiny import sentences

    def encode(rows):
        enc = adapter.tokenizer(
            [r[0] for r in rows], padding="max_length", max_length=16, truncation=True
        )
        x = {k: np.asarray(enc[k], dtype=np.int64) for k in adapter.input_names}
        return x, np.array([r[1] == "positive" for r in rows], dtype=np.int64)

    (xt, yt), (xv, yv) = encode(sentences(n, seed)), encode(sentences(32, seed + 1))
    return DistillData(train=xt, train_labels=yt, val=xv, val_labels=yv, teacher_logits=None)


@pytest.mark.parametrize("symmetric", [True, False])
def test_transformer_qat_trains_feature_losses_and_exports_qdq(tmp_path, symmetric):
    """Every Linear but the head fake-quantized (weights per channel, inputs per tensor at the
    calibrated range); the hidden/attention/relation taps still fire on the quantized copy; the
    export is standard Q/DQ and ONNX Runtime computes what the fake-quantized model does."""
    teacher = tiny_text_adapter(tmp_path, layers=2)
    student = tiny_text_adapter(tmp_path, layers=2)
    data = _text_data(teacher)
    q = quantize_for_training(
        student, data.train, symmetric_activations=symmetric, tensorrt=symmetric
    )
    linears = [m for m in q.module.modules() if isinstance(m, torch.nn.Linear)]
    quantized = [m for m in linears if isinstance(m, QuantLinear)]
    assert len(quantized) == len(linears) - 1  # the classifier stays float
    assert not any(isinstance(m, QuantLinear) for m in student.module.modules())
    assert any(isinstance(m, QuantEmbedding) for m in q.module.modules())
    zero = {int(m.input_zero_point) for m in quantized}
    assert zero == {0} if symmetric else zero != {0}
    res = distill(q, data, _cfg(epochs=1, losses=FEATURE_LOSSES), 0, teacher=teacher)
    assert {"hidden", "attention", "relation"} <= set(res.history[0]["losses"])
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert non_standard_ops(model) == []
    # weights (Linear and embedding tables) are int8 initializers; Q runs on activations only
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= len(quantized) + 1 and ops.count("DequantizeLinear") >= len(int8)
    assert ops.count("QuantizeLinear") >= len({float(m.input_scale) for m in quantized})
    # an embedding table is gathered as int8, then its rows dequantized (not the whole table)
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert "DequantizeLinear" not in {made_by.get(n.input[0]) for n in gathers}
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert max(np.prod(t.dims) for t in floats) < 32 * 32  # biases, scales, the float head
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # ONNX Runtime's int8 kernels round a few activations one step differently from PyTorch's
    # fake quantization, by CPU: within 1e-4 on an AVX-512 VNNI Xeon, up to 6.4e-4 on an AVX2 EPYC
    # (logits ~0.15); a wrong scale or a missing Q/DQ pair is off by 1e-2 and more
    np.testing.assert_allclose(sess.run(None, data.val)[0], q.forward_numpy(data.val), atol=2e-3)


def test_stage_writes_the_qat_onnx_beside_the_float_student(cnn_project, tmp_path):
    """After one distillation epoch (the teacher run in training) the student's BatchNorm
    statistics are stale (its FP32 val accuracy 0.35): QAT re-estimates them on the calibration
    rows before folding them into the convs, and reaches 0.78 (0.67-0.83 over seeds 0-3); folded
    as they stood, 0.23 (at most 0.43 over those seeds)."""
    import json

    from tiny import write_yaml

    from kdc import api

    cfg = config_of(cnn_project)
    cfg["distill"].update(epochs=1, augment="shift")
    cfg["quantize"].update(method="qat", qat_epochs=1)
    path = write_yaml(tmp_path / "model.yaml", cfg)
    api.search(path, "jetson", tmp_path / "run", quiet=True)
    api.distill(path, "jetson", tmp_path / "run", quiet=True)
    rec = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["distill"]
    assert {"distill/student_qat.onnx", "distill/qat_history.jsonl"} <= set(rec["outputs"])
    history = (tmp_path / "run" / "distill" / "qat_history.jsonl").read_text().splitlines()
    assert len(history) == rec["metrics"]["qat_epochs_run"] == 1
    assert rec["metrics"]["qat_val_accuracy"] > 0.6
    assert rec["metrics"]["qat_val_engine"] == "pytorch-cpu-fake-quant"
    assert rec["metrics"]["qat_teacher_rows"]["rows_run"] > 0
    model = onnx.load(str(tmp_path / "run" / "distill" / "student_qat.onnx"))
    assert non_standard_ops(model) == []
    # distilled again for PTQ: the QAT graph of the earlier student does not stay beside it
    cfg["quantize"]["method"] = "ptq"
    api.distill(write_yaml(path, cfg), "jetson", tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "distill" / "student_qat.onnx").exists()
    assert not (tmp_path / "run" / "distill" / "qat_history.jsonl").exists()


@pytest.mark.parametrize("target", ["host", "jetson"])
def test_text_transformer_qat_end_to_end(bert_project, tmp_path, target):
    """A BERT student distilled, then trained fake-quantized (it was refused before any stage):
    its Q/DQ graph ships as the INT8 engine and keeps the FP32 student's accuracy; asked for
    reduce_range, its Linear weights are 7-bit, recorded so, where ONNX Runtime runs it; for a
    TensorRT target it is symmetric 8-bit and bundled (kdc lint finds nothing TensorRT cannot
    parse)."""
    from tiny import write_yaml

    from kdc import api

    cfg = config_of(bert_project)
    cfg["quantize"].update(method="qat", qat_epochs=1, reduce_range=True)
    report = api.compress(
        write_yaml(tmp_path / "model.yaml", cfg), target, tmp_path / "run", quiet=True
    )
    fp32, int8 = (
        next(e for e in report["engines"] if (e["engine"], e["precision"]) == ("onnxruntime", p))
        for p in ("fp32", "int8")
    )
    assert int8["quantization"]["method"] == "qat"
    graph = onnx.load(str(tmp_path / "run" / int8["path"])).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    assert report["teacher"]["accuracy"]["accuracy"] >= 0.9
    assert int8["accuracy"]["accuracy"] >= fp32["accuracy"]["accuracy"] - 0.05
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather"}
    top = max(
        int(abs(w).max())
        for k, w in _int8_weights(onnx.ModelProto(graph=graph)).items()
        if k not in tables
    )
    assert bool(int8["quantization"].get("reduce_range")) is (target == "host")
    assert top <= 63 if target == "host" else top > 64
    noted = [w for w in report["warnings"] if ": quantize.reduce_range not used" in w]
    assert bool(noted) is (target == "jetson")
    if target == "jetson":
        assert int8["quantization"]["activations"] == "int8 symmetric"
        inits = {t.name: t for t in graph.initializer}
        zero = {inits[n.input[2]].data_type for n in graph.node if n.op_type == "QuantizeLinear"}
        assert zero == {onnx.TensorProto.INT8}  # signed activations, as TensorRT takes them
        trt = next(e for e in report["engines"] if e["engine"] == "tensorrt")
        assert trt["status"] == "bundle", trt.get("reason")


class _EmbedLinear(torch.nn.Module):
    """An embedding table, a Linear on its rows, and a Linear the forward never reaches."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.fc = torch.nn.Linear(8, 4)
        self.unused = torch.nn.Linear(8, 4)

    def forward(self, ids):
        return self.fc(self.emb(ids)).sum(1)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_fake_quant_layers_keep_unreached_linears_float_and_fold_to_int8(reduce_range):
    """A Linear the calibration never reaches has no input range and stays float; quantized
    weights fold to int8 initializers that ONNX Runtime dequantizes to what PyTorch computed:
    a Linear's within ±63 with reduce_range (7-bit), the gathered table's at 8 bits anyway."""
    torch.manual_seed(0)
    net, ids = _EmbedLinear().eval(), torch.randint(0, 10, (4, 5))
    quantized = quantize_layers(
        net, [(ids,)], symmetric_activations=False, reduce_range=reduce_range
    )
    assert quantized == 1
    assert isinstance(net.fc, QuantLinear) and isinstance(net.emb, QuantEmbedding)
    assert type(net.unused) is torch.nn.Linear
    buf = __import__("io").BytesIO()
    freeze_weight_scales(net)  # constant scales: folding does not wait for onnxslim
    torch.onnx.export(net, (ids,), buf, input_names=["ids"], opset_version=17, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    assert fold_weight_quantizers(model) == 2  # the Linear's and the table's weights
    assert {t.data_type for t in model.graph.initializer if len(t.dims) == 2} == {
        onnx.TensorProto.INT8
    }
    top = {w.shape: int(abs(w).max()) for w in _int8_weights(model).values()}
    assert top == {(4, 8): 63 if reduce_range else 127, (10, 8): 127}  # the Linear, the table
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(ids).numpy()
    np.testing.assert_allclose(sess.run(None, {"ids": ids.numpy()})[0], ref, atol=1e-5)


def test_sentence_embedding_qat_keeps_its_output_name_and_quantizes_every_linear(tmp_path):
    """A sentence encoder has no head: every Linear is quantized, and the QAT graph's output is
    `embedding` like its FP32 graph's (it was exported as `logits`)."""
    from test_embeddings import _encoder_dir, _texts
    from tiny import write_yaml

    from kdc import api

    _encoder_dir(tmp_path / "teacher")
    (tmp_path / "train.txt").write_text("\n".join(_texts(120, 3)) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(_texts(40, 4)) + "\n")
    cfg = {
        "name": "tinyemb",
        "task": "sentence-embedding",
        "teacher": {"path": "teacher"},
        "data": {"source": "train.txt", "eval": "test.txt", "max_length": 16},
        "student": {"layers": 2},
        "distill": {"epochs": 1, "batch_size": 32, "lr": 0.001},
        "quantize": {"calibration_size": 32, "method": "qat", "qat_epochs": 1},
        "verify": {"warmup": 2, "iterations": 10, "min_duration_s": 0.01, "threads": 1},
    }
    path = write_yaml(tmp_path / "model.yaml", cfg)
    report = api.compress(path, "host", tmp_path / "run", quiet=True)
    int8 = next(e for e in report["engines"] if e["precision"] == "int8")
    graph = onnx.load(str(tmp_path / "run" / int8["path"])).graph
    assert [o.name for o in graph.output] == ["embedding"]
    assert int8["accuracy"]["mean_cosine"] > 0.5
    rec = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["distill"]
    parity = rec["metrics"]["qat_export_parity"]  # the graph against its fake-quantized model
    assert parity["cosine"] > 0.99
    weights = [
        t for t in graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.INT8
    ]
    floats = [  # a float matrix (not a column of row scales) would be an unquantized weight
        t
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and min(t.dims) > 1
    ]
    assert weights and not floats  # the last Linear too: there is no head to keep float


def test_an_embedding_quantizes_the_rows_it_gathers_as_the_frozen_table_does():
    """Training fake-quantizes only the gathered rows; export, the whole table with frozen
    scales: per-row scales make the two equal."""
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8))
    quantize_layers(model, [], symmetric_activations=True)
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(0))
    assert isinstance(model[0], QuantEmbedding)
    trained = model(ids)
    assert not torch.equal(trained, torch.nn.functional.embedding(ids, model[0].weight))
    assert torch.equal(trained, freeze_weight_scales(model)(ids))
