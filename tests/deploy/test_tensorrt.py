"""TensorRT builder logic against a fake `trt` module, trtexec command lines, fp16 conversion."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdc.deploy import fp16, trtexec
from kdc.deploy import tensorrt as trtmod
from kdc.deploy.fp16 import convert_fp16
from kdc.deploy.tensorrt import (
    REASON_UNAVAILABLE,
    BuildOptions,
    GraphFacts,
    TensorRTUnavailable,
    build_engine,
    check_graph,
    configure,
    create_network,
    engine_cache_key,
    format_parser_errors,
    graph_facts,
    options_for_profile,
    plan_build,
    supports_dla,
)
from kdc.errors import UserError
from kdc.profiles import load_profile

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
SHAPES = {"input_ids": [1, 128], "attention_mask": [1, 128]}


# --- a fake `tensorrt` module that records what the builder code asks of it -----------------


class FakeConfig:
    def __init__(self, log: list) -> None:
        object.__setattr__(self, "log", log)

    def __setattr__(self, name, value):
        self.log.append(("set", name, value))

    def set_flag(self, flag):
        self.log.append(("flag", flag))

    def set_memory_pool_limit(self, pool, size):
        self.log.append(("pool", pool, size))

    def add_optimization_profile(self, profile):
        self.log.append(("add_profile", profile.shapes))

    def create_timing_cache(self, data):
        self.log.append(("timing_cache_in", bytes(data)))
        return data

    def set_timing_cache(self, cache, ignore_mismatch):
        self.log.append(("set_timing_cache", ignore_mismatch))

    def get_timing_cache(self):
        return SimpleNamespace(serialize=lambda: b"tuned")


class FakeProfile:
    def __init__(self) -> None:
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (lo, opt, hi)


class FakeError:
    def __init__(self, name: str, op: str, desc: str) -> None:
        self._name, self._op, self._desc = name, op, desc

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def desc(self):
        return self._desc


def fake_trt(version: str = "10.3.0", *, inputs=(("x", (1, 8)),), errors=(), built=b"ENGINE"):
    """A stand-in for `tensorrt`; 11.x has no FP16/INT8 builder flags, like the real one."""
    log: list = []
    flags = {"GPU_FALLBACK": "GPU_FALLBACK"}
    if version.startswith("10."):
        flags |= {"FP16": "FP16", "INT8": "INT8"}
    network = SimpleNamespace(
        num_inputs=len(inputs),
        get_input=lambda i: SimpleNamespace(name=inputs[i][0], shape=inputs[i][1]),
    )

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            log.append(("network", flags))
            return network

        def create_builder_config(self):
            return FakeConfig(log)

        def create_optimization_profile(self):
            return FakeProfile()

        def build_serialized_network(self, net, config):
            log.append(("build",))
            return built

    class Parser:
        def __init__(self, net, logger):
            self.num_errors = len(errors)

        def parse_from_file(self, path):
            log.append(("parse", path))
            return not errors

        def get_error(self, i):
            return errors[i]

    return SimpleNamespace(
        __version__=version,
        log=log,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
        BuilderFlag=SimpleNamespace(**flags),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        DeviceType=SimpleNamespace(DLA="DLA"),
        HardwareCompatibilityLevel=SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS"),
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=Builder,
        OnnxParser=Parser,
    )


def _configure(trt, version: str, opts: BuildOptions):
    plan = plan_build(version, opts)
    builder = trt.Builder(None)
    network = create_network(trt, builder, plan)
    configure(trt, builder, builder.create_builder_config(), network, plan, opts)
    return trt.log


def _tiny_onnx(path: Path, *, qdq: bool = False) -> Path:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(w, "W")]
    x = "x"
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        ]
        x = "xd"
    nodes += [
        helper.make_node("MatMul", [x, "W"], ["h"]),
        helper.make_node("Softmax", ["h"], ["logits"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# --- plans per version ------------------------------------------------------------------------


def test_tensorrt_10_fp16_is_weakly_typed_with_fp16_flag():
    log = _configure(fake_trt("10.3.0"), "10.3.0", BuildOptions(precision="fp16"))
    assert ("network", 0) in log
    assert [e for e in log if e[0] == "flag"] == [("flag", "FP16")]
    assert ("pool", "WORKSPACE", 1024 << 20) in log
    assert ("set", "builder_optimization_level", 3) in log


def test_tensorrt_11_is_strongly_typed_without_precision_flags():
    log = _configure(fake_trt("11.0.0"), "11.0.0", BuildOptions(precision="fp16"))
    assert ("network", 1 << 1) in log
    assert not [e for e in log if e[0] == "flag"]


def test_int8_plans_and_refusal_without_qdq():
    assert plan_build("10.3", BuildOptions(precision="int8")).flags == ("INT8", "FP16")
    assert plan_build("11.1", BuildOptions(precision="int8")).flags == ()
    no_qdq = GraphFacts(has_qdq=False, is_fp16=False, dynamic_inputs=frozenset())
    for version in ("10.3", "11.1"):
        with pytest.raises(UserError, match="Q/DQ"):
            check_graph(plan_build(version, BuildOptions(precision="int8")), "int8", no_qdq)
    with_qdq = GraphFacts(has_qdq=True, is_fp16=False, dynamic_inputs=frozenset())
    plan = check_graph(plan_build("11.1", BuildOptions(precision="int8")), "int8", with_qdq)
    assert plan.strongly_typed and not plan.convert_fp16


def test_fp16_on_11_asks_for_a_converted_graph():
    fp32 = GraphFacts(has_qdq=False, is_fp16=False, dynamic_inputs=frozenset())
    fp16 = GraphFacts(has_qdq=False, is_fp16=True, dynamic_inputs=frozenset())
    opts = BuildOptions(precision="fp16")
    assert check_graph(plan_build("11.0", opts), "fp16", fp32).convert_fp16
    assert not check_graph(plan_build("11.0", opts), "fp16", fp16).convert_fp16
    assert not check_graph(plan_build("10.3", opts), "fp16", fp32).convert_fp16


def test_unsupported_version_and_bad_options_are_user_errors():
    with pytest.raises(UserError, match="not supported"):
        plan_build("8.6.1", BuildOptions())
    with pytest.raises(UserError, match="precision"):
        BuildOptions(precision="bf16")
    with pytest.raises(UserError, match="min <= opt <= max"):
        BuildOptions(profiles={"x": ([4, 8], [1, 8], [8, 8])})


def test_dla_only_where_the_profile_and_version_have_it():
    with pytest.raises(UserError, match="no DLA"):
        options_for_profile(load_profile("jetson-orin-nano-8gb"), "fp16", SHAPES, dla_core=0)
    opts = options_for_profile(load_profile("jetson-agx-orin-64gb"), "fp16", SHAPES, dla_core=0)
    assert opts.dla_core == 0
    log = _configure(
        fake_trt("10.3.0", inputs=(("input_ids", (1, 128)),)),
        "10.3.0",
        BuildOptions(precision="fp16", dla_core=0),
    )
    assert ("flag", "GPU_FALLBACK") in log
    assert ("set", "default_device_type", "DLA") in log and ("set", "DLA_core", 0) in log
    with pytest.raises(UserError, match="no DLA support"):
        plan_build("11.0", opts)
    with pytest.raises(UserError, match="fp16 or int8"):
        plan_build("10.3", BuildOptions(precision="fp32", dla_core=0))


@pytest.mark.parametrize(
    ("version", "jetpack", "dla"),
    [
        ("8.6", "5.1", True),
        ("10.0.1.6", "6.0", True),
        ("10.3", "6.2", True),
        ("10.7.0.23", "6.2", True),  # the last 10.x release with DLA
        ("10.8.0.43", "6.2", False),
        ("10.10", "6.2", False),  # minor read as a number, not a string
        ("10.13.3", None, False),
        ("11.0", "7.0", False),
        ("11.4.0", "7.2.2", False),  # DLA on Windows on ARM only
        ("11.4.1", "7.2.1", False),  # back on AGX Orin, from JetPack 7.2.2
        ("11.4.1", None, False),
        ("11.4.1.3", "7.2.2", True),
        ("11.5", "7.3", True),
    ],
)
def test_dla_follows_the_tensorrt_release_and_jetpack(version, jetpack, dla):
    assert supports_dla(version, jetpack) is dla
    opts = BuildOptions(precision="int8", dla_core=0, jetpack=jetpack)
    if version.startswith("8."):
        return  # kdc builds with TensorRT 10 and 11 only
    if dla:
        assert plan_build(version, opts).dla_core == 0
        assert "GPU_FALLBACK" in plan_build(version, opts).flags
    else:
        with pytest.raises(UserError) as e:
            plan_build(version, opts)
        assert f"TensorRT {version}" in str(e.value) and "has no DLA support" in str(e.value)
        assert "up to 10.7, or 11.4.1+ with JetPack 7.2.2+" in str(e.value)
    assert plan_build(version, BuildOptions(precision="int8")).dla_core is None  # GPU: any


def test_dla_bundle_command_follows_the_version():
    dla = BuildOptions(precision="fp16", dla_core=0)
    assert "--useDLACore=0" in trtexec.build_command("m.onnx", "m.plan", dla, "10.7")
    with pytest.raises(UserError, match="TensorRT 10.8 has no DLA support"):
        trtexec.build_command("m.onnx", "m.plan", dla, "10.8")


def test_profile_shapes_are_set_for_dynamic_inputs():
    trt = fake_trt(inputs=(("input_ids", (-1, -1)), ("attention_mask", (-1, -1))))
    profiles = {k: ([1, 16], [1, 128], [4, 128]) for k in SHAPES}
    log = _configure(
        trt, "10.3.0", BuildOptions(profiles=profiles, hardware_compatibility="ampere+")
    )
    assert ("add_profile", profiles) in log
    assert ("set", "hardware_compatibility_level", "AMPERE_PLUS") in log
    with pytest.raises(UserError, match="dynamic dims"):
        _configure(fake_trt(inputs=(("input_ids", (-1, -1)),)), "10.3.0", BuildOptions())
    with pytest.raises(UserError, match="unknown inputs"):
        _configure(fake_trt(), "10.3.0", BuildOptions(profiles={"nope": ([1], [1], [1])}))
    static = _configure(fake_trt(inputs=(("x", (1, 8)),)), "10.3.0", BuildOptions())
    assert not [e for e in static if e[0] == "add_profile"]


def test_engine_cache_key_changes_with_each_component():
    base = dict(
        gpu_name="Orin",
        compute_capability="8.7",
        trt_version="10.3.0",
        precision="fp16",
        shapes={"x": [1, 8]},
        onnx_sha256="ab",
    )
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base)
    changes = dict(
        gpu_name="T4",
        compute_capability="7.5",
        trt_version="10.7.0",
        precision="int8",
        shapes={"x": [2, 8]},
        onnx_sha256="cd",
        fp16_converter="kdc-builtin 1",  # the graph TensorRT 11 builds FP16 from was converted
    )
    keys = {engine_cache_key(**{**base, k: v}) for k, v in changes.items()}
    assert len(keys) == len(changes) and key not in keys


def test_parser_errors_name_node_and_op():
    parser = SimpleNamespace(
        num_errors=2,
        get_error=lambda i: [
            FakeError("Unique_3", "Unique", "No importer registered for op: Unique"),
            SimpleNamespace(desc=lambda: "old binding without node fields"),
        ][i],
    )
    text = format_parser_errors(parser)
    assert "node 'Unique_3' (Unique): No importer registered" in text
    assert "old binding without node fields" in text


# --- build_engine end to end with the fake module ---------------------------------------------


@pytest.fixture
def no_gpu_probe(monkeypatch):
    monkeypatch.setattr(trtmod, "device_identity", lambda profile: ("Fake GPU", "8.7"))


def test_build_engine_writes_engine_timing_cache_and_reuses_cache(tmp_path, no_gpu_probe):
    model = _tiny_onnx(tmp_path / "m.onnx")
    profile = load_profile("jetson-orin-nano-8gb")
    opts = BuildOptions(
        precision="fp16",
        profiles={"x": ([1, 8], [1, 8], [4, 8])},
        timing_cache=tmp_path / "timing.cache",
        cache_dir=tmp_path / "cache",
    )
    trt = fake_trt(inputs=(("x", (-1, 8)),))
    rec = build_engine(model, tmp_path / "m.plan", profile, opts, trt_module=trt)
    assert ("add_profile", opts.profiles) in trt.log
    assert (tmp_path / "m.plan").read_bytes() == b"ENGINE"
    assert (tmp_path / "timing.cache").read_bytes() == b"tuned"
    assert rec["flags"] == ["FP16"] and not rec["cached"] and rec["tensorrt"] == "10.3.0"
    again = fake_trt()
    rec2 = build_engine(model, tmp_path / "m2.plan", profile, opts, trt_module=again)
    assert rec2["cached"] and rec2["cache_key"] == rec["cache_key"]
    assert not again.log and (tmp_path / "m2.plan").read_bytes() == b"ENGINE"


def test_the_engine_cache_is_not_reused_across_workspace_or_external_weights(
    tmp_path, no_gpu_probe
):
    """The cache key covers the workspace (it bounds the tactics TensorRT may pick) and the
    weights a model keeps in external data files (its .onnx file alone does not change)."""
    model = tmp_path / "ext" / "m.onnx"
    model.parent.mkdir()
    onnx.save(
        onnx.load(_tiny_onnx(tmp_path / "m.onnx")),
        model,
        save_as_external_data=True,
        size_threshold=0,
        location="m.data",
    )
    jetson = load_profile("jetson-orin-nano-8gb")
    opts = BuildOptions(profiles={"x": ([1, 8], [1, 8], [1, 8])}, cache_dir=tmp_path / "cache")

    def build(opts: BuildOptions) -> dict:
        trt = fake_trt(inputs=(("x", (-1, 8)),))
        return build_engine(model, tmp_path / "m.plan", jetson, opts, trt_module=trt)

    first = build(opts)
    assert build(opts)["cached"]
    assert not build(dataclasses.replace(opts, workspace_mb=2048))["cached"]
    data = model.with_name("m.data")
    data.write_bytes(bytes(reversed(data.read_bytes())))  # new weights, same graph file
    rebuilt = build(opts)
    assert not rebuilt["cached"] and rebuilt["cache_key"] != first["cache_key"]


def test_build_engine_on_11_parses_an_fp16_graph(tmp_path, no_gpu_probe):
    model = _tiny_onnx(tmp_path / "m.onnx")
    trt = fake_trt("11.0.0")
    opts = BuildOptions(precision="fp16", profiles={"x": ([1, 8], [1, 8], [1, 8])})
    build_engine(model, tmp_path / "m.plan", load_profile("jetson"), opts, trt_module=trt)
    parsed = Path(next(e[1] for e in trt.log if e[0] == "parse"))
    assert parsed.name == "m.fp16.onnx" and graph_facts(onnx.load(parsed)).is_fp16


def test_the_engine_cache_follows_the_fp16_converter(tmp_path, no_gpu_probe, monkeypatch):
    """TensorRT 11 builds FP16 from a graph kdc converts first: an engine cached from one
    converter's graph (kdc's built-in one, an earlier version of it) is not reused once another
    makes the graph. TensorRT 10 converts nothing, and its key names no converter."""
    model = _tiny_onnx(tmp_path / "m.onnx")
    opts = BuildOptions(
        precision="fp16", profiles={"x": ([1, 8], [1, 8], [1, 8])}, cache_dir=tmp_path / "cache"
    )

    def build(version: str = "11.0.0") -> dict:
        jetson, trt = load_profile("jetson"), fake_trt(version)
        return build_engine(model, tmp_path / "m.plan", jetson, opts, trt_module=trt)

    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)  # not installed
    first = build()
    assert first["fp16_converter"] == f"kdc-builtin {fp16.BUILTIN_VERSION}" and not first["cached"]
    assert build()["cached"]
    monkeypatch.setattr(fp16, "BUILTIN_VERSION", fp16.BUILTIN_VERSION + 1)  # it writes other graphs
    changed = build()
    assert not changed["cached"] and changed["cache_key"] != first["cache_key"]
    half = SimpleNamespace(convert_float_to_float16=lambda m, keep_io_types: fp16._to_fp16(m, ""))
    stub = SimpleNamespace(__version__="1.14.0", float16=half)  # onnxconverter-common
    monkeypatch.setitem(sys.modules, "onnxconverter_common", stub)
    other = build()
    assert other["fp16_converter"] == "onnxconverter-common 1.14.0" and not other["cached"]
    assert len({first["cache_key"], changed["cache_key"], other["cache_key"]}) == 3
    assert "fp16_converter" not in build("10.3.0")


def test_build_engine_reports_parse_errors(tmp_path, no_gpu_probe):
    model = _tiny_onnx(tmp_path / "m.onnx")
    trt = fake_trt(errors=[FakeError("Softmax_1", "Softmax", "bad axis")])
    with pytest.raises(UserError, match=r"node 'Softmax_1' \(Softmax\): bad axis"):
        build_engine(
            model,
            tmp_path / "m.plan",
            load_profile("jetson"),
            BuildOptions(profiles={"x": ([1, 8], [1, 8], [1, 8])}),
            trt_module=trt,
        )


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_tensorrt_unavailable_when_not_installed(tmp_path):
    with pytest.raises(TensorRTUnavailable) as err:
        build_engine(
            _tiny_onnx(tmp_path / "m.onnx"),
            tmp_path / "m.plan",
            load_profile("jetson"),
            BuildOptions(),
        )
    assert err.value.reason == REASON_UNAVAILABLE
    assert isinstance(err.value, UserError)


@pytest.mark.skipif(not HAS_TRT, reason="needs the tensorrt package (not installable here)")
def test_real_tensorrt_has_the_planned_flags():
    import tensorrt as trt

    for precision in ("fp32", "fp16"):
        plan = plan_build(trt.__version__, BuildOptions(precision=precision))
        assert all(hasattr(trt.BuilderFlag, f) for f in plan.flags)
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


# --- fp16 conversion ----------------------------------------------------------------------------


def test_convert_fp16_keeps_float32_io_and_outputs(tmp_path):
    src = _tiny_onnx(tmp_path / "m.onnx")
    dst = convert_fp16(src, tmp_path / "m16.onnx")
    model = onnx.load(dst)
    assert graph_facts(model).is_fp16
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(dst)).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and np.allclose(got, ref, atol=1e-2)


@pytest.mark.skipif(
    importlib.util.find_spec("onnxconverter_common") is not None,
    reason="onnxconverter-common handles Q/DQ graphs",
)
def test_builtin_fp16_converter_refuses_qdq(tmp_path):
    with pytest.raises(UserError, match="Q/DQ"):
        convert_fp16(_tiny_onnx(tmp_path / "q.onnx", qdq=True), tmp_path / "q16.onnx")


# --- trtexec command lines ------------------------------------------------------------------------


def test_trtexec_build_command_for_10_and_11():
    profiles = {"input_ids": ([1, 128], [1, 128], [1, 128])}
    opts = BuildOptions(precision="fp16", profiles=profiles, timing_cache=Path("t.cache"))
    v10 = trtexec.build_command("m.onnx", "m.plan", opts, "10.3")
    assert v10[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan"]
    assert "--fp16" in v10 and "--stronglyTyped" not in v10
    assert {
        "--minShapes=input_ids:1x128",
        "--optShapes=input_ids:1x128",
        "--maxShapes=input_ids:1x128",
        "--memPoolSize=workspace:1024M",
        "--builderOptimizationLevel=3",
        "--timingCacheFile=t.cache",
    } <= set(v10)
    v11 = trtexec.build_command("m.onnx", "m.plan", opts, "11.1")
    # 11.x builds strongly typed always; its trtexec keeps --stronglyTyped as a deprecated no-op
    assert not {"--stronglyTyped", "--fp16", "--int8"} & set(v11)
    int8 = trtexec.build_command("m.onnx", "m.plan", BuildOptions(precision="int8"), "10.3")
    assert {"--int8", "--fp16"} <= set(int8)
    dla = trtexec.build_command("m.onnx", "m.plan", BuildOptions(dla_core=1), "10.3")
    assert {"--useDLACore=1", "--allowGPUFallback"} <= set(dla)


def test_trtexec_bench_command_follows_nvidia_protocol():
    cmd = trtexec.bench_command(
        "m.plan", {"x": [1, 8]}, iterations=200, export_times="results/times.json"
    )
    assert cmd[:3] == ["trtexec", "--loadEngine=m.plan", "--shapes=x:1x8"]
    assert {
        "--useCudaGraph",
        "--useSpinWait",
        "--noDataTransfers",
        "--warmUp=500",
        "--avgRuns=500",
        "--iterations=200",
        "--exportTimes=results/times.json",
    } <= set(cmd)


def test_max_batch_gives_one_profile_over_a_range_of_batches():
    """build.max_batch: min batch 1, opt the verify shape, max max_batch; the other dims fixed."""
    t4 = load_profile("nvidia-t4")
    shapes = {"input_ids": [4, 128], "attention_mask": [4, 128]}
    opts = trtmod.options_for_profile(t4, "fp16", shapes, max_batch=32)
    assert opts.profiles["input_ids"] == ([1, 128], [4, 128], [32, 128])
    fixed = trtmod.options_for_profile(t4, "fp16", shapes)
    assert fixed.profiles["attention_mask"] == ([4, 128], [4, 128], [4, 128])
    with pytest.raises(UserError, match="max"):  # below the opt batch: min <= opt <= max fails
        trtmod.options_for_profile(t4, "fp16", shapes, max_batch=2)


def test_a_native_build_for_a_range_of_batches_needs_a_graph_of_dynamic_batch(
    tmp_path, no_gpu_probe
):
    """build.max_batch on a machine with TensorRT: the optimization profile spans the batches and
    the engine record says so; a graph whose batch is a fixed number is refused (TensorRT would
    build one batch size and say nothing)."""
    model = _tiny_onnx(tmp_path / "m.onnx")
    t4 = load_profile("nvidia-t4")
    opts = trtmod.options_for_profile(t4, "fp16", {"x": [2, 8]}, max_batch=16)
    trt = fake_trt(inputs=(("x", (-1, 8)),))
    rec = build_engine(model, tmp_path / "m.plan", t4, opts, trt_module=trt)
    assert ("add_profile", {"x": ([1, 8], [2, 8], [16, 8])}) in trt.log
    assert rec["batch_range"] == [1, 2, 16]
    m = onnx.load(str(model))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(m, tmp_path / "fixed.onnx")
    with pytest.raises(UserError, match="fixed batch") as e:
        build_engine(tmp_path / "fixed.onnx", tmp_path / "f.plan", t4, opts, trt_module=fake_trt())
    assert e.value.field == "build.max_batch"
