"""TensorRT engine builder through the `tensorrt` Python API (imported lazily).

TensorRT 10.x builds weakly typed networks with precision flags (FP16; INT8 only from Q/DQ in the
graph, never a calibrator). TensorRT 11.x removed those flags: every network is strongly typed,
INT8 comes only from Q/DQ and FP16 from a graph converted beforehand (`kdc.deploy.fp16`). The
decisions live in pure functions (`plan_build`, `check_graph`, `create_network`, `configure`,
`engine_cache_key`, `format_parser_errors`) that tests drive with a fake `trt` module.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from kdc.deploy.external_data import onnx_sha256
from kdc.errors import KdcError, UserError
from kdc.profiles import HardwareProfile
from kdc.rundir import atomic_path, sha256_json, size_mb

REASON_UNAVAILABLE = (
    "TensorRT is not installed on this machine; build on the device with bundle/build.sh"
)
PRECISIONS = ("fp32", "fp16", "int8")
HARDWARE_COMPAT = {"none": None, "ampere+": "AMPERE_PLUS"}
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})

Shapes = dict[str, tuple[list[int], list[int], list[int]]]


class TensorRTUnavailable(UserError):
    """The `tensorrt` package cannot be imported here."""

    def __init__(self, detail: str = "") -> None:
        self.reason = REASON_UNAVAILABLE
        super().__init__(REASON_UNAVAILABLE + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Typing:
    """How one TensorRT major version turns a precision into a network."""

    strongly_typed: bool
    precision_flags: dict[str, tuple[str, ...]]


# 10.x: weak typing; INT8 also enables FP16 so layers left unquantized run in half precision.
# 11.x: strong typing only.
TYPING: dict[int, Typing] = {
    10: Typing(False, {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}),
    11: Typing(True, {"fp32": (), "fp16": (), "int8": ()}),
}
# DLA (TensorRT docs, "Working with DLA"): up to 10.7; none from 10.8 to 11.4.0 on Jetson; back
# in 11.4.1 on Jetson AGX Orin with JetPack 7.2.2 or later (strongly typed).
DLA_RULE = "TensorRT up to 10.7, or 11.4.1+ with JetPack 7.2.2+"


def parse_version(version: str, parts: int = 2) -> tuple[int, ...]:
    """The first `parts` numbers of a version string such as '10.3.0.30' (missing ones 0)."""
    fields = str(version).strip().split(".")[:parts]
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        raise UserError(
            f"cannot read TensorRT version '{version}'",
            field="runtime.tensorrt",
            fix="write it as MAJOR.MINOR, e.g. '10.3'",
        ) from None
    return tuple(numbers + [0] * (parts - len(numbers)))


def typing_for(version: str) -> Typing:
    """The typing rules of a TensorRT version; only 10.x and 11.x are supported."""
    major = parse_version(version)[0]
    if major not in TYPING:
        raise UserError(
            f"TensorRT {version} is not supported",
            field="runtime.tensorrt",
            fix=f"use TensorRT {' or '.join(f'{m}.x' for m in TYPING)}",
        )
    return TYPING[major]


def supports_dla(version: str, jetpack: str | None = None) -> bool:
    """Whether a TensorRT release builds DLA engines on Jetson (`DLA_RULE`)."""
    release = parse_version(version, 3)
    if release < (10, 8, 0):
        return True
    if release < (11, 4, 1):
        return False
    return jetpack is not None and parse_version(jetpack, 3) >= (7, 2, 2)


@dataclass
class BuildOptions:
    """What to build: precision, builder settings and one optimization profile."""

    precision: str = "fp16"
    workspace_mb: int = 1024
    optimization_level: int = 3
    profiles: Shapes = field(default_factory=dict)
    timing_cache: Path | None = None
    dla_core: int | None = None
    hardware_compatibility: str = "none"
    cache_dir: Path | None = None
    jetpack: str | None = None  # the device's JetPack, which decides DLA on TensorRT 11

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(
                f"unknown precision '{self.precision}'",
                field="precision",
                fix=f"use one of {', '.join(PRECISIONS)}",
            )
        if self.hardware_compatibility not in HARDWARE_COMPAT:
            raise UserError(
                f"unknown hardware compatibility '{self.hardware_compatibility}'",
                field="hardware_compatibility",
                fix="use 'none' or 'ampere+'",
            )
        if not 0 <= self.optimization_level <= 5:
            raise UserError(
                "builder optimization level must be 0..5",
                field="optimization_level",
                fix="use 3 (TensorRT's default)",
            )
        if self.workspace_mb <= 0:
            raise UserError("workspace must be positive", field="workspace_mb", fix="use 1024")
        for name, (lo, opt, hi) in self.profiles.items():
            if not len(lo) == len(opt) == len(hi) or not all(
                0 < a <= b <= c for a, b, c in zip(lo, opt, hi, strict=False)
            ):
                raise UserError(
                    f"shapes of input '{name}' need 0 < min <= opt <= max per dim",
                    field="profiles",
                    fix="give three shapes of equal rank",
                )


def batch_profiles(input_shapes: dict[str, list[int]], max_batch: int | None = None) -> Shapes:
    """One optimization profile: min = opt = max = `input_shapes` for every input, or with
    `max_batch`, batches 1 to `max_batch` tuned for `input_shapes`' batch."""
    if max_batch is None:
        return {k: (list(v), list(v), list(v)) for k, v in input_shapes.items()}
    return {k: ([1, *v[1:]], list(v), [max_batch, *v[1:]]) for k, v in input_shapes.items()}


def options_for_profile(
    profile: HardwareProfile,
    precision: str,
    input_shapes: dict[str, list[int]],
    *,
    dla_core: int | None = None,
    max_batch: int | None = None,
    **kwargs: Any,
) -> BuildOptions:
    """BuildOptions for a hardware profile; DLA core `dla_core` (GPU fallback) only where the
    profile has it; batches 1 to `max_batch` (tuned for `input_shapes`) when given, else those
    shapes alone."""
    if precision not in profile.runtime.precisions:
        raise UserError(
            f"precision {precision} is not offered by {profile.name}",
            field="precision",
            fix=f"use one of {', '.join(profile.runtime.precisions)}",
        )
    if dla_core is not None:
        from kdc.deploy.dla import check_dla_core, check_one_shape

        check_dla_core(profile, dla_core)
        check_one_shape(max_batch)
    return BuildOptions(
        precision=precision,
        profiles=batch_profiles(input_shapes, max_batch),
        dla_core=dla_core,
        jetpack=profile.runtime.jetpack,
        **kwargs,
    )


@dataclass(frozen=True)
class BuildPlan:
    """The builder settings chosen for one TensorRT version and one set of options."""

    version: str
    strongly_typed: bool
    flags: tuple[str, ...]
    dla_core: int | None
    hardware_compatibility: str | None
    convert_fp16: bool = False


def plan_build(trt_version: str, opts: BuildOptions) -> BuildPlan:
    """Network typing and BuilderFlag names for a version; refuses DLA where it cannot run."""
    typing = typing_for(trt_version)
    flags = list(typing.precision_flags[opts.precision])
    if opts.dla_core is not None:
        if not supports_dla(trt_version, opts.jetpack):
            on = f" on JetPack {opts.jetpack}" if opts.jetpack else ""
            raise UserError(
                f"TensorRT {trt_version}{on} has no DLA support (DLA: {DLA_RULE})",
                field="dla_core",
                fix="build for the GPU, or use TensorRT 10.0-10.7 (JetPack 6) or 11.4.1+ "
                "(JetPack 7.2.2+)",
            )
        if opts.precision == "fp32":
            raise UserError(
                "DLA runs fp16 or int8 only",
                field="precision",
                fix="use --precision fp16 or int8 with DLA",
            )
        flags.append("GPU_FALLBACK")
    return BuildPlan(
        trt_version,
        typing.strongly_typed,
        tuple(flags),
        opts.dla_core,
        HARDWARE_COMPAT[opts.hardware_compatibility],
    )


@dataclass(frozen=True)
class GraphFacts:
    """What the builder needs to know about an ONNX graph."""

    has_qdq: bool
    is_fp16: bool
    dynamic_inputs: frozenset[str]
    fixed_batch_inputs: frozenset[str] = frozenset()  # first dim a number


def graph_facts(model: onnx.ModelProto) -> GraphFacts:
    """Q/DQ present, fp16 weights present, graph inputs with a symbolic or unknown dim, and
    graph inputs whose first (batch) dim is a fixed number."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]

    def symbolic(d: Any) -> bool:
        return bool(d.dim_param) or d.dim_value <= 0

    dims = {i.name: list(i.type.tensor_type.shape.dim) for i in inputs}
    return GraphFacts(
        has_qdq=any(n.op_type in QDQ_OPS for n in model.graph.node),
        is_fp16=any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer),
        dynamic_inputs=frozenset(k for k, ds in dims.items() if any(map(symbolic, ds))),
        fixed_batch_inputs=frozenset(k for k, ds in dims.items() if ds and not symbolic(ds[0])),
    )


def check_batch_range(opts: BuildOptions, facts: GraphFacts, source: str | None = None) -> None:
    """Refuse a range of batches (build.max_batch) for a graph with an input of fixed batch."""
    ranged = {k for k, (lo, _, hi) in opts.profiles.items() if lo[:1] != hi[:1]}
    fixed = sorted(ranged & facts.fixed_batch_inputs)
    if fixed:
        raise UserError(
            f"input {', '.join(fixed)} of the graph has a fixed batch: its engine takes one "
            "batch size",
            source=source,
            field="build.max_batch",
            fix="export with a dynamic batch axis, or drop build.max_batch",
        )


def batch_range(profiles: Shapes) -> list[int] | None:
    """[min, opt, max] batch of an optimization profile (None without inputs)."""
    shapes = next(iter(profiles.values()), None)
    return [s[0] for s in shapes] if shapes and all(shapes) else None


def check_graph(plan: BuildPlan, precision: str, facts: GraphFacts) -> BuildPlan:
    """Refuse INT8 without Q/DQ; on strongly typed versions ask for an fp16 graph conversion."""
    if precision == "int8" and not facts.has_qdq:
        raise UserError(
            "INT8 needs Q/DQ nodes in the graph (kdc uses no calibrator)",
            field="precision",
            fix="quantize the ONNX first (kdc.deploy.onnxruntime.quantize_int8)",
        )
    needs = plan.strongly_typed and precision == "fp16" and not facts.is_fp16
    return dataclasses.replace(plan, convert_fp16=needs)


def engine_cache_key(
    *,
    gpu_name: str,
    compute_capability: str,
    trt_version: str,
    precision: str,
    shapes: Shapes | dict,
    onnx_sha256: str,
    build_options: dict | None = None,
    fp16_converter: str | None = None,
) -> str:
    """sha256 over everything an engine is bound to (engines do not port across these), and the
    fp16 converter (`kdc.deploy.fp16.converter`) that made the graph it is built from, where
    one did (TensorRT 11's FP16): another converter's graph builds another engine."""
    converted = {"fp16_converter": fp16_converter} if fp16_converter else {}
    return sha256_json(
        {
            "gpu": gpu_name,
            "cc": compute_capability,
            "tensorrt": trt_version,
            "precision": precision,
            "shapes": shapes,
            "onnx": onnx_sha256,
            "options": build_options or {},
            **converted,
        }
    )


def format_parser_errors(parser: Any) -> str:
    """One line per ONNX parser error, naming node and op when the binding reports them."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name = _call(err, "node_name")
        op = _call(err, "node_operator")
        where = f"node '{name}' ({op}): " if name or op else ""
        lines.append(where + str(err.desc()))
    return "; ".join(lines) or "the parser reported no detail"


def _call(obj: Any, method: str) -> str:
    fn = getattr(obj, method, None)
    return str(fn() or "") if callable(fn) else ""


def create_network(trt: Any, builder: Any, plan: BuildPlan) -> Any:
    """A network definition, strongly typed when the plan says so."""
    flags = 0
    if plan.strongly_typed:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


def configure(
    trt: Any, builder: Any, config: Any, network: Any, plan: BuildPlan, opts: BuildOptions
) -> None:
    """Apply workspace, optimization level, flags, DLA, compatibility and shape profile."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    config.builder_optimization_level = opts.optimization_level
    for name in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if plan.hardware_compatibility:
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, plan.hardware_compatibility
        )
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    unknown = set(opts.profiles) - {t.name for t in inputs}
    if unknown:
        raise UserError(
            f"shapes given for unknown inputs {sorted(unknown)}",
            field="profiles",
            fix=f"use the model's inputs: {', '.join(t.name for t in inputs)}",
        )
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    missing = [t.name for t in dynamic if t.name not in opts.profiles]
    if missing:
        raise UserError(
            f"inputs {missing} have dynamic dims and no shapes",
            field="profiles",
            fix="give min/opt/max shapes for each of them",
        )
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            profile.set_shape(tensor.name, *opts.profiles[tensor.name])
        config.add_optimization_profile(profile)


def load_timing_cache(config: Any, path: Path | None) -> None:
    """Attach a timing cache, seeded from `path` when that file exists."""
    if path is None:
        return
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    config.set_timing_cache(config.create_timing_cache(data), False)


def save_timing_cache(config: Any, path: Path | None) -> None:
    """Write the (updated) timing cache after a build."""
    if path is None:
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))


def import_tensorrt() -> Any:
    """The `tensorrt` module, or TensorRTUnavailable."""
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailable(str(e)) from None
    return tensorrt


def device_identity(profile: HardwareProfile) -> tuple[str, str]:
    """(GPU name, compute capability) of CUDA device 0, else the profile's declared values."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except ImportError:
        pass
    return f"profile:{profile.name}", profile.runtime.compute_capability or "unknown"


def build_engine(
    onnx_path: Path | str,
    engine_path: Path | str,
    profile: HardwareProfile,
    opts: BuildOptions,
    *,
    trt_module: Any = None,
) -> dict:
    """Build (or take from the engine cache) a serialized engine; returns an engine record.

    `trt_module` replaces `import tensorrt` (alternate bindings, tests)."""
    trt = trt_module or import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    version = str(trt.__version__)
    facts = graph_facts(onnx.load(str(onnx_path), load_external_data=False))
    check_batch_range(opts, facts, str(onnx_path))
    plan = check_graph(plan_build(version, opts), opts.precision, facts)
    gpu, cc = device_identity(profile)
    fp16 = None
    if plan.convert_fp16:
        from kdc.deploy.fp16 import converter  # fp16.py reads this module's QDQ_OPS

        fp16 = converter()[0]
    key = engine_cache_key(
        gpu_name=gpu,
        compute_capability=cc,
        trt_version=version,
        precision=opts.precision,
        shapes=opts.profiles,
        onnx_sha256=onnx_sha256(onnx_path),  # with its external data files, if any
        build_options={
            "level": opts.optimization_level,
            "dla": opts.dla_core,
            "hw": opts.hardware_compatibility,
            "workspace_mb": opts.workspace_mb,  # bounds the tactics the builder may choose
        },
        fp16_converter=fp16,
    )
    cached = opts.cache_dir / f"{key}.plan" if opts.cache_dir else None
    record = {
        "engine": "tensorrt",
        "status": "built",
        "path": str(engine_path),
        "precision": opts.precision,
        "tensorrt": version,
        "device": gpu,
        "cache_key": key,
        "strongly_typed": plan.strongly_typed,
        "flags": list(plan.flags),
        # min / opt / max batch of the optimization profile (one batch: all three equal)
        "batch_range": batch_range(opts.profiles),
        **({"fp16_converter": fp16} if fp16 else {}),
    }
    if cached and cached.is_file():
        with atomic_path(engine_path) as tmp:
            shutil.copyfile(cached, tmp)
        return {**record, "cached": True, "size_mb": size_mb(engine_path)}
    source = onnx_path
    if plan.convert_fp16:
        from kdc.deploy.fp16 import convert_fp16

        source = convert_fp16(onnx_path, engine_path.with_suffix(".fp16.onnx"))
    blob = _run_builder(trt, source, plan, opts)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(blob)
    if cached:
        with atomic_path(cached) as tmp:
            shutil.copyfile(engine_path, tmp)
    return {**record, "cached": False, "size_mb": size_mb(engine_path)}


def _run_builder(trt: Any, source: Path, plan: BuildPlan, opts: BuildOptions) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = create_network(trt, builder, plan)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        raise UserError(
            f"TensorRT cannot parse the model: {format_parser_errors(parser)}",
            source=str(source),
            fix="run `kdc lint` on it for the TensorRT rules",
        )
    config = builder.create_builder_config()
    configure(trt, builder, config, network, plan, opts)
    load_timing_cache(config, opts.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise KdcError(f"TensorRT {plan.version} failed to build {source.name}; see its log")
    save_timing_cache(config, opts.timing_cache)
    return bytes(serialized)
