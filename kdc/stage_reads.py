"""What each stage reads of the config, the target profile and kdc's own recipes: the parts of
its input hash (`kdc.pipeline.stage_hash`) beside the teacher and data fingerprint and what it
reads of the stage before it (`kdc.upstream_reads`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kdc.config import BuildConfig, KdcConfig, QuantizeConfig
from kdc.preflight import builds_int8, builds_tensorrt, int8_qat, qat_reduce_range
from kdc.profiles import HardwareProfile
from kdc.upstream_reads import QAT_GRAPH

ConfigReads = Callable[[KdcConfig], tuple[str, ...]]
ProfileReads = Callable[[KdcConfig, HardwareProfile], Any]


COMMON = ("name", "task", "seed", "teacher", "data")
# the tolerances export checks parity with, and verify checks each engine's
PARITY = ("export.atol", "export.rtol", "export.min_cosine")
# what a predicted latency depends on (search ranks by it; prune.target_latency_ms prunes to it)
LATENCY = ("quantize.precision", "verify.batch", "export.cls_only_last_layer")
# what quantization-aware training (quantize.method: qat of an INT8 run, in distill) reads
# besides its method
QAT = (
    "quantize.qat_epochs",
    "quantize.qat_lr",
    "quantize.calibration_size",
    "quantize.symmetric_activations",
    "export.opset",
    "export.cls_only_last_layer",
)


def split_reads(cfg: KdcConfig) -> tuple[str, ...]:
    """The task, the data and, where it draws the eval split and training rows (no
    data.split_seed), the seed: read unless 0, so a run of the default seed hashes as before."""
    return ("task", "data", *(("seed",) if cfg.data.split_seed is None and cfg.seed else ()))


def distill_reads(cfg: KdcConfig) -> tuple[str, ...]:
    """Distillation's config: pruning to a latency reads how latency is predicted (on the exported
    graph), QAT (`int8_qat`) its settings; neither is read otherwise (`distill_idle`: what it reads
    but does not use)."""
    pruned = cfg.prune.enabled and cfg.prune.target_latency_ms is not None
    latency = (*LATENCY, "export.opset") if pruned else ()
    qat = QAT if int8_qat(cfg) else ()
    return (*COMMON, "distill", "prune", "quantize.method", *latency, *qat)


TENSORRT_ONLY = ("max_batch", "dla_core")  # build settings only a TensorRT engine reads


def tensorrt_facets(cfg: KdcConfig, profile: HardwareProfile, *fields: str) -> dict[str, Any]:
    """The build `fields` (of TENSORRT_ONLY) that are set, where a TensorRT engine is built:
    set on a target without TensorRT (warned unused) they keep a stage's outputs."""
    if not builds_tensorrt(cfg, profile):
        return {}
    return {f: v for f in fields if (v := getattr(cfg.build, f)) is not None}


def whole_profile(*fields: str) -> ProfileReads:
    """The whole profile, with the `tensorrt_facets` of `fields` beside it when any is set (a
    run without them hashes as before they existed)."""

    def reads(cfg: KdcConfig, profile: HardwareProfile) -> Any:
        dump = profile.model_dump(mode="json")
        facets = tensorrt_facets(cfg, profile, *fields)
        return {"profile": dump, **facets} if facets else dump

    return reads


def required_outputs(name: str, cfg: KdcConfig) -> tuple[str, ...]:
    """The outputs (run-relative) stage `name` must have recorded to be done for `cfg`: an INT8
    QAT run's distill its QAT graph (`int8_qat`), which build ships as the INT8 engine. A record
    without it (a manifest an older kdc wrote) is not done: `--resume` runs distill again."""
    return (f"distill/{QAT_GRAPH}",) if name == "distill" and int8_qat(cfg) else ()


def distill_profile(cfg: KdcConfig, profile: HardwareProfile) -> Any:
    """What distillation reads of the target: the channel multiple a CNN student is narrowed
    (or any student pruned) to, not read for a transformer's; for QAT, whether a TensorRT engine
    is built from it (`builds_tensorrt`: symmetric fake-quantizers), whether it trains 7-bit
    weights (`qat_reduce_range`, by default this CPU's), only where it applies (a run without it
    hashes as before), and `int8_engine_facets`; pruning to a latency reads the whole latency
    model. Recipe versions are `distill_versions`'."""
    from kdc.models import student_family

    cnn = student_family(cfg) == "cnn"
    recipe = {"reduce_range": True} if qat_reduce_range(cfg, profile) else {}
    if int8_qat(cfg):
        recipe |= int8_engine_facets(cfg, profile)
    if cfg.prune.enabled and cfg.prune.target_latency_ms is not None:
        whole = whole_profile("dla_core")(cfg, profile)
        return {"profile": whole, **recipe} if recipe else whole
    facets: dict[str, Any] = {**recipe}
    if cnn or (cfg.prune.enabled and not cfg.prune.round_to):
        facets["channel_divisor"] = profile.defaults.channel_divisor
    if int8_qat(cfg):
        facets["tensorrt"] = builds_tensorrt(cfg, profile)
    return facets


def int8_engine_facets(cfg: KdcConfig, profile: HardwareProfile) -> dict[str, Any]:
    """The engine an INT8 run's graph is quantized for (`builds_tensorrt`) where kdc quantized it
    otherwise before: for a TensorRT target whose build.engines leaves TensorRT out (it was
    TensorRT's), or with quantize.symmetric_activations set against it (symmetric for ONNX
    Runtime, asymmetric for TensorRT: `qdq.finish_qdq` followed the activations' scheme). Those
    runs quantize again; the others hash as before."""
    asked, trt = cfg.quantize.symmetric_activations, builds_tensorrt(cfg, profile)
    before = "tensorrt" in profile.runtime.engines
    if not builds_int8(cfg) or (trt == before and asked in (None, trt)):
        return {}
    return {"int8_for": "tensorrt" if trt else "onnxruntime"}


def build_profile(cfg: KdcConfig, profile: HardwareProfile) -> Any:
    """What build reads of the target: the whole profile with its `tensorrt_facets`, and beside
    it the `int8_engine_facets` and, where it builds (or bundles) a TensorRT engine, whose
    bundle's goldens are the eval split's first rows, `eval_cut_versions`; only where any
    applies (a run without them hashes as before)."""
    whole = whole_profile(*TENSORRT_ONLY)(cfg, profile)
    facets = int8_engine_facets(cfg, profile)
    if builds_tensorrt(cfg, profile):
        facets |= eval_cut_versions(cfg)
    return {"profile": whole, **facets} if facets else whole


# how data.limit_eval cuts a classifier's eval split: 3, each class's share of the rows, at least
# one of each where there is room (`labels.stratified_head`; 2: a small class's share could round
# to none; 1: its first rows)
EVAL_CUT_VERSION = 3


def eval_cut_versions(cfg: KdcConfig, *, padding: bool = False) -> dict[str, int]:
    """`EVAL_CUT_VERSION` where data.limit_eval cuts a classifier's eval split, for a stage that
    reads its rows (export's parity rows, verify's); `padding`: for one that reads only their
    attention-mask padding (latency predictions), of a text classifier only. Other runs hash as
    before."""
    cut = cfg.data.limit_eval is not None and cfg.task != "sentence-embedding"
    masked = cfg.task == "text-classification" or not padding
    return {"eval_cut": EVAL_CUT_VERSION} if cut and masked else {}


def search_versions(cfg: KdcConfig) -> dict[str, int]:
    """The latency model's head costs version (`arch_cost.HEAD_COSTS_VERSION`) where the
    teacher's config.json lists pruned heads, which it costs by, other teachers costing as
    before; `eval_cut_versions` (its latency predictions' padding)."""
    from kdc.deploy.arch_cost import HEAD_COSTS_VERSION
    from kdc.hf_files import read_config

    path = cfg.resolve(cfg.teacher.path) if cfg.teacher.path else None
    conf = read_config(path, "teacher.path") if path and (path / "config.json").is_file() else {}
    stated = conf.get("pruned_heads")  # preflight names a malformed one
    heads = (
        {"head_costs": HEAD_COSTS_VERSION}
        if isinstance(stated, dict) and any(stated.values())
        else {}
    )
    return {**heads, **eval_cut_versions(cfg, padding=True)}


def distill_versions(cfg: KdcConfig) -> dict[str, int]:
    """A CNN student's BatchNorm re-estimation version (`precise_bn.VERSION`), a pruned
    student's pruning version (`prune.version`, by its family; pruning to a latency,
    `eval_cut_versions` of its padding), an INT8 QAT run's scheme version (`qat.SCHEMES`, by
    the student's family)."""
    from kdc.compress import precise_bn, prune
    from kdc.compress.qat import SCHEMES
    from kdc.models import student_family

    family = student_family(cfg)
    versions = {"precise_bn": precise_bn.VERSION} if family == "cnn" else {}
    if cfg.prune.enabled:
        versions["prune"] = prune.version(family, cfg.prune.hidden_ratio)
        if cfg.prune.target_latency_ms is not None:
            versions |= eval_cut_versions(cfg, padding=True)
    qat = {"qat_scheme": SCHEMES[family].version} if int8_qat(cfg) else {}
    return {**versions, **qat}


def build_versions(cfg: KdcConfig) -> dict[str, int]:
    """NNCF PTQ's recipe version (`nncf_ptq.RECIPE_VERSIONS`, by the student's family) where
    it may make the INT8 graph."""
    from kdc.compress.nncf_ptq import RECIPE_VERSIONS
    from kdc.models import student_family

    q = cfg.quantize
    nncf = builds_int8(cfg) and q.method == "ptq" and q.ptq != "onnxruntime"
    return {"nncf_ptq": RECIPE_VERSIONS[student_family(cfg)]} if nncf else {}


BUILD = tuple(f"build.{k}" for k in BuildConfig.model_fields if k not in TENSORRT_ONLY)


# Settings that change how fast or in how much memory a stage runs, not what it computes (the
# teacher cache's outputs equal the teacher's up to float rounding, as another thread count's
# would): not hashed, so changing one does not redo a finished stage.
UNHASHED = ("distill.teacher_cache_mb",)
# Fields added to a section a stage reads whole: hashed only where set away from their default,
# so a run of the default hashes as before kdc had them (a `--resume` does not redo its stages).
HASHED_UNLESS_DEFAULT = ("distill.precision", "verify.max_duration_s")
# read as the hash of the whole config, unhashed fields too: the report records it (and the
# config's warnings), so a change no other stage reads still rewrites the report
WHOLE_CONFIG = "*"


def distill_idle(cfg: KdcConfig) -> tuple[str, ...]:
    """What distillation reads but does not use for `cfg`: whether it checkpoints (a run continued
    from its checkpoint trains as an uninterrupted one would), the prune section while pruning is
    off, quantize.method where the run makes no INT8 graph (no QAT, `int8_qat`)."""
    prune = () if cfg.prune.enabled else ("prune",)
    method = () if builds_int8(cfg) else ("quantize.method",)
    return ("distill.checkpoint", *prune, *method)


# the quantize settings the INT8 graph is made by (all but its precision)
INT8_ONLY = tuple(f"quantize.{k}" for k in QuantizeConfig.model_fields if k != "precision")


def build_idle(cfg: KdcConfig) -> tuple[str, ...]:
    """What build reads but does not use for `cfg`: the INT8 settings where it makes no INT8
    graph (quantize.precision fp32 or fp16); verify.threads unless `ptq: auto` times the INT8
    graphs it picks from (PTQ, not QAT, of an INT8 run)."""
    int8 = builds_int8(cfg)
    timed = int8 and not int8_qat(cfg) and cfg.quantize.ptq == "auto"
    return (*(() if int8 else INT8_ONLY), *(() if timed else ("verify.threads",)))


def config_reads(
    cfg: KdcConfig, reads: tuple[str, ...], idle: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The values of `reads` (sections, "section.field"s or WHOLE_CONFIG) in `cfg`, but the
    UNHASHED ones and the HASHED_UNLESS_DEFAULT ones at their defaults; those `idle` (sections
    or fields that cannot change the stage's outputs for `cfg`) at their defaults, whatever they
    are set to: a run of default settings hashes as before kdc knew them idle, and editing one
    keeps the stage's outputs."""
    data = cfg.fingerprint()

    def defaults(section: str) -> dict[str, Any]:
        return type(getattr(cfg, section))().model_dump(mode="json")

    for path in idle:
        section, _, key = path.partition(".")
        default = defaults(section)
        if key:
            data[section][key] = default[key]
        else:
            data[section] = default
    for path in UNHASHED:
        section, key = path.split(".")
        data.get(section, {}).pop(key, None)
    for path in HASHED_UNLESS_DEFAULT:
        section, key = path.split(".")
        if data[section][key] == defaults(section)[key]:
            del data[section][key]
    out: dict[str, Any] = {}
    for path in reads:
        if path == WHOLE_CONFIG:
            out[path] = cfg.sha256()
            continue
        section, _, key = path.partition(".")
        out[path] = data.get(section, {}).get(key) if key else data.get(section)
    return out
