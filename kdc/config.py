"""The model.yaml schema (pydantic v2) and `load_config`, which turns any bad input into
ConfigError."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kdc.errors import ConfigError, field_path
from kdc.rundir import sha256_json

Task = Literal["text-classification", "image-classification", "sentence-embedding"]


def resolve_path(rel: str, base: str | Path) -> Path:
    """`rel` (`~` expanded) relative to `base` unless absolute."""
    p = Path(rel).expanduser()
    return p if p.is_absolute() else Path(base) / p


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherConfig(Section):
    """Where the teacher comes from: exactly one of `path` (HF dir, or a CNN student kdc saved:
    a directory with kdc_model.json), `name` (a torchvision model name, or `timm/<name>`) or
    `entrypoint` (`package.module:function` returning an nn.Module)."""

    kind: Literal["auto", "huggingface", "torchvision", "timm", "entrypoint", "kdc"] = "auto"
    path: str | None = None
    name: str | None = None
    entrypoint: str | None = None
    weights: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    trust_remote_code: bool = False
    pooling: Literal["mean", "cls", "max"] | None = None

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, v: str | None) -> str | None:
        if v is not None and (":" not in v or v.count(":") != 1 or not all(v.split(":"))):
            raise ValueError("must look like 'package.module:function'")
        return v

    @field_validator("name")
    @classmethod
    def _not_a_hub_id(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v and "/" in v and not v.startswith("timm/") and info.data.get("kind") != "timm":
            raise ValueError(
                f"'{v}' looks like a Hugging Face hub id, and kdc downloads nothing: save the "
                "model locally (save_pretrained, or `hf download`) and give that directory as "
                "teacher.path (name takes a torchvision model, or timm/<name>)"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        given = [k for k in ("path", "entrypoint", "name") if getattr(self, k)]
        if self.kind == "auto" and len(given) != 1:
            raise ValueError(
                f"give exactly one of path, entrypoint, name (given: {', '.join(given) or 'none'});"
                " e.g. 'path: ./teacher' for a Hugging Face directory"
            )
        need = KIND_SOURCE.get(self.kind)
        if need and not getattr(self, need):
            raise ValueError(f"kind '{self.kind}' needs '{need}'")
        return self


MIN_IMAGE_SIZE = 8  # the least data.image_size
# the field that says where a teacher of each kind but auto comes from
KIND_SOURCE = {
    "huggingface": "path",
    "entrypoint": "entrypoint",
    "torchvision": "name",
    "timm": "name",
    "kdc": "path",
}


def as_columns(text_column: str | list[str]) -> list[str]:
    """A text column setting as a list: two names where rows are text pairs."""
    return [text_column] if isinstance(text_column, str) else list(text_column)


class DataConfig(Section):
    """Training and evaluation data. `source` is a path (csv, jsonl, tsv, parquet, txt, a
    `datasets` directory, an image folder) or `sklearn:digits`; `eval` an optional separate eval
    file.
    `split_seed` draws the held-out eval split (each class's share of `eval_fraction`) and
    `limit_train`'s subsample when there is no eval file; unset, the run's `seed` does, so a
    run with another training seed and a fixed split sets it (as Hugging Face Trainer's
    `data_seed`)."""

    source: str
    eval: str | None = None
    format: Literal[
        "auto", "csv", "tsv", "jsonl", "parquet", "txt", "datasets", "imagefolder", "sklearn"
    ] = "auto"
    # one column, or two for text pairs (sentence1/sentence2, premise/hypothesis, question/answer):
    # tokenized together as the tokenizer's text and text_pair, as GLUE's scripts do
    text_column: str | list[str] = "text"
    label_column: str = "label"
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int | None = Field(None, ge=0)
    max_length: int = Field(128, ge=8, le=4096)
    image_size: int | None = Field(None, ge=MIN_IMAGE_SIZE)
    channels: Literal[1, 3] = 3  # an image folder's images as grayscale (1) or RGB (3)
    # a CNN teacher's input normalization, per channel after scaling to [0, 1] (torchvision's
    # Normalize: ImageNet's mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225])
    mean: list[float] | None = None
    std: list[float] | None = None
    limit_train: int | None = Field(None, ge=1)
    limit_eval: int | None = Field(None, ge=1)
    split_sentences: bool = False

    @model_validator(mode="after")
    def _mean_with_std(self) -> DataConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together (one value per image channel each)")
        if self.mean is not None and self.std is not None:  # both or neither, as just checked
            if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                raise ValueError("mean and std need one value per image channel (1 or 3) each")
            if min(self.std) <= 0:
                raise ValueError("std values must be positive")
        return self

    @field_validator("text_column")
    @classmethod
    def _one_or_two_columns(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str):
            return v
        if not 1 <= len(v) <= 2 or len(set(v)) != len(v) or not all(v):
            raise ValueError(
                "must name one column, or two different ones for text pairs "
                "(e.g. [premise, hypothesis])"
            )
        return v[0] if len(v) == 1 else v

    @property
    def text_columns(self) -> list[str]:
        """The text column(s): two where rows are text pairs."""
        return as_columns(self.text_column)

    @property
    def text_pairs(self) -> bool:
        """Whether each row is a pair of texts (two text columns)."""
        return len(self.text_columns) == 2

    def text_column_names(self) -> str:
        """The text column(s) quoted for a message: `'review'`, `'premise' and 'hypothesis'`."""
        return " and ".join(f"'{c}'" for c in self.text_columns)


class StudentConfig(Section):
    """The fixed student (search.strategy: fixed): transformers keep `layers` evenly spaced
    teacher layers; CNNs keep `width` of each layer's channels (by weight magnitude). Or any
    point of the search space by `architecture`: transformers `num_hidden_layers`,
    `hidden_size`, `num_attention_heads`, `intermediate_size` (with a `layers` list: which teacher
    layers); CNNs `stage_width` (one multiplier per stage) and `stage_depth` (removable blocks
    kept per stage); omitted keys keep the teacher's value."""

    layers: StrictInt | list[StrictInt] | None = None
    width: float = Field(0.5, gt=0, le=1)
    architecture: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _layer_count(self) -> StudentConfig:
        """A `layers` count is the architecture's num_hidden_layers where that gives none (the
        count was ignored, and the student kept every teacher layer)."""
        n, arch = self.layers, self.architecture
        if isinstance(n, int) and isinstance(arch, dict) and "num_hidden_layers" not in arch:
            self.architecture = {**arch, "num_hidden_layers": n}
        return self


class SpaceRange(Section):
    """An inclusive range of one student size in `search.space` (either end may be left open)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _an_end(self) -> SpaceRange:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both (e.g. {min: 3})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


class SearchConfig(Section):
    """`evolution`: aging evolution over students derived from the teacher, ranked by a
    training-free `proxy` on one batch of `batch_size` training rows, among those whose predicted
    latency fits the budget (constraints.latency_budget_ms, else the target's default, else
    `latency_fraction` of the way from the smallest student's predicted latency to the
    teacher's); `exhaustive`: the same ranking over every student that fits (until
    `time_budget_s`), so with `init: teacher` the seed changes only the proxy's batch. `space`
    narrows what is searched: `student.architecture`'s keys, each a list of allowed values or a
    `{min, max}` range (a CNN's `stage_width`/`stage_depth` apply to every stage), e.g.
    `{num_hidden_layers: {min: 3}}`."""

    strategy: Literal["fixed", "evolution", "exhaustive"] = "fixed"
    proxy: str = "auto"  # auto: proxies.AUTO_PROXY (diswot)
    # also recorded per candidate: the free counts by default, `all` for every proxy (the search
    # then runs ~4x slower: grad_norm and naswot are full passes over the batch)
    proxies: list[str] | Literal["all"] = ["params", "flops"]
    init: Literal["teacher", "random"] = "teacher"  # how students are initialised for scoring
    latency_fraction: float = Field(0.5, gt=0, le=1)
    # share of a latency *constraint* kept free: candidates must be predicted under
    # (1 - margin) x budget, for the latency model's error (MAPE ~10 % on a calibrated host) and
    # the p99 that verify judges where the search predicts p50
    latency_margin: float = Field(0.1, ge=0, lt=1)
    population: int = Field(16, ge=2)
    cycles: int = Field(48, ge=1)
    sample_size: int = Field(4, ge=1)
    time_budget_s: float = Field(120, gt=0)
    # 32 rows rank students as well as 64 at half the cost (bench/results/proxy.json: Kendall tau
    # on 24 distilled students, text +0.73 vs +0.70, digits +0.70 vs +0.73)
    batch_size: int = Field(32, ge=2)
    # text rows cut to this many tokens for scoring (null: data.max_length); 128 ranks the 24
    # distilled sentiment students as well as 256 (tau +0.76 vs +0.73) at less cost
    proxy_max_tokens: int | None = Field(128, ge=8)
    space: dict[str, list[float] | SpaceRange] = Field(default_factory=dict)

    @field_validator("proxies", mode="before")
    @classmethod
    def _list_or_all(cls, v: Any) -> Any:
        if v is None:  # what `null` meant before `all`
            return "all"
        if (isinstance(v, str) and v != "all") or (isinstance(v, list) and "all" in v):
            raise ValueError(f"give a list of proxy names or all (on its own), not {v!r}")
        return v


class LossConfig(Section):
    """One distillation loss (`logits`, `ce`, `hidden`, `attention`, `relation`, `embedding`),
    its weight and its own parameters (see kdc/compress/losses.py); a bare name stands for
    `{name: <name>}`."""

    name: str
    weight: float = Field(1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, v: Any) -> Any:
        """A bare name (`losses: [logits, hidden]`) is `{name: <name>}`."""
        return {"name": v} if isinstance(v, str) else v

    @field_validator("params", mode="before")
    @classmethod
    def _yaml_on_key(cls, v: Any) -> Any:
        """YAML 1.1 reads an unquoted `on:` key (the relation/embedding losses' parameter) as
        true: take it back as the name it was."""
        if isinstance(v, dict) and True in v and "on" not in v:
            return {("on" if k is True else k): x for k, x in v.items()}
        return v


class DistillConfig(Section):
    """Training of the student. `losses` defaults to the model family's recipe; `augment`
    perturbs `augment_prob` of each batch's rows and has the teacher label them (`auto`: text
    splicing, image shifts; `swap`/`mix`: token substitution; kdc.compress.augment).
    `group_by_length` batches text rows of similar length together (less padding, same rows per
    epoch). `precision: bf16` runs the training forward passes under bfloat16 autocast (weights,
    optimizer and losses stay fp32; evaluation and QAT run in fp32)."""

    epochs: int = Field(3, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    losses: list[LossConfig] | None = Field(None, min_length=1)  # None: the task's default
    augment: Literal["none", "auto", "splice", "swap", "mix", "shift"] = "none"
    augment_prob: float = Field(0.5, ge=0, le=1)
    group_by_length: bool = True
    # dropout on the student's attention probabilities while training (None: its config's,
    # BERT's 0.1); at 0 PyTorch's fused CPU attention runs in training too: a 3-layer MiniLM
    # student's 3-epoch distill stage (sentiment, 2 threads) 108 -> 91 s
    attention_dropout: float | None = Field(None, ge=0, lt=1)
    # memory (per process) for the teacher's outputs on rows that reach it unperturbed, looked
    # up in later epochs instead of run again (0: run the teacher on every batch); the sentiment
    # example kept 540 reviews in 524 MB, distillation 746 -> 645 s (bench/RESULTS.md)
    teacher_cache_mb: int = Field(1024, ge=0)
    early_stopping_patience: int | None = Field(None, ge=1)
    # which epoch ships: the last (the learning rate has decayed to 0), or the best on the
    # validation split carved from train. Small splits make `best` a noisy pick: drugsCom's 60
    # validation reviews kept students 0.6-5.2 points worse on the eval set than the last epoch
    # (4 runs, bench/RESULTS.md)
    select: Literal["last", "best"] = "last"
    max_steps: int | None = Field(None, ge=1)
    checkpoint: bool = True
    # the student's and teacher's forward passes in training under bfloat16 autocast: a 3-layer
    # BERT student (hidden 384, batch 16, seq 128, 1 thread) 1.0 -> 0.63 s per step on a Zen 4
    # CPU with avx512_bf16; CPUs without native bf16, and GPUs before compute capability 8.0,
    # emulate it (warned; on such CPUs slower than fp32)
    precision: Literal["fp32", "bf16"] = "fp32"


class PruneConfig(Section):
    """Structured pruning during distillation: `ratio` of FFN neurons / conv channels (and of
    attention heads unless `head_ratio`), removed in `steps` increments over the first `epochs`
    epochs (default: half of them); with `target_latency_ms`, the smallest ratio up to `ratio`
    whose predicted latency on the target meets it."""

    enabled: bool = False
    ratio: float = Field(0.3, ge=0, lt=1)
    head_ratio: float | None = Field(None, ge=0, lt=1)
    hidden_ratio: float = Field(0.0, ge=0, lt=1)
    importance: Literal["magnitude", "taylor"] = "magnitude"
    steps: int = Field(4, ge=1)
    epochs: int | None = Field(None, ge=1)
    target_latency_ms: float | None = Field(None, gt=0)
    round_to: int | None = Field(None, ge=1)


class QuantizeConfig(Section):
    """INT8 by post-training quantization (build stage) or quantization-aware training (`qat`:
    `qat_epochs` of distillation with fake quantization; NNCF for CNNs, fake-quantized Linear
    layers for transformers; kdc.compress.qat)."""

    precision: Literal["fp32", "fp16", "int8"] = "int8"
    method: Literal["ptq", "qat"] = "ptq"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_size: int = Field(128, ge=1)
    # None: symmetric where a TensorRT engine is built from the INT8 graph (`builds_tensorrt`),
    # asymmetric for ONNX Runtime alone
    symmetric_activations: bool | None = None
    # 7-bit weights (ONNX Runtime's reduce_range; NNCF's overflow fix on every layer; QAT trains
    # them, but never for TensorRT): the fix for x86 int8 kernels without VNNI, whose 16-bit pair
    # sums saturate. None: on where the INT8 graph runs on this CPU and it lacks VNNI (a CNN's
    # INT8 engine there: 0.674 -> 0.819 accuracy).
    reduce_range: bool | None = None
    qat_epochs: int = Field(2, ge=1)
    qat_lr: float | None = Field(None, gt=0)
    # Accuracy-aware PTQ: the largest INT8-vs-FP32 output loss allowed on held-out training rows
    # (share of changed predictions; 1 − mean cosine for embeddings); past it, the most sensitive
    # layers (up to fallback_max_layers) stay in float. None: off.
    max_int8_loss: float | None = Field(None, ge=0, le=1)
    # PTQ backend: ONNX Runtime quantize_static, NNCF, or `auto` (both; the one whose outputs on
    # held-out training rows are closer to FP32 ships; on a target this machine can time, only
    # among graphs at most 1.1x slower than the fastest). Default auto: on the sentiment bench's
    # pruned students NNCF's graph flipped 2-4x fewer predictions than ORT's at equal speed.
    ptq: Literal["onnxruntime", "nncf", "auto"] = "auto"
    fallback_max_layers: int = Field(4, ge=1)


class ExportConfig(Section):
    # auto: optimum-onnx for Hugging Face classifiers it supports, the TorchScript exporter else
    exporter: Literal["auto", "optimum", "torch"] = "auto"
    # the student's last layer computes only the [CLS] position when its head reads nothing else
    # (BERT-style classifiers; logits unchanged, parity checked): kdc.export.cls_only
    cls_only_last_layer: bool = True
    opset: int = Field(17, ge=17, le=23)
    atol: float = Field(1e-4, gt=0)
    rtol: float = Field(1e-3, ge=0)
    min_cosine: float = Field(0.9999, gt=0, le=1)


class BuildConfig(Section):
    """Engines to build. The default (null) builds ONNX Runtime and, where the target runs it,
    TensorRT; an engine named here that the target does not run is reported `unavailable` with
    the reason."""

    engines: list[Literal["onnxruntime", "tensorrt"]] | None = None
    # ONNX Runtime graphs' attention softmaxes read Max(S, ReduceMax(S) - 80) (same outputs;
    # kdc.deploy.softmax_floor): padded inputs run up to ~1.5x faster, unpadded ones ~2-12 %
    # slower. Off for an application that never pads (batch 1 at each input's own length).
    softmax_floor: bool = True
    # TensorRT engines take batches 1 to max_batch, tuned for (and timed and predicted at)
    # verify.batch; their predicted memory is max_batch's. Default: verify.batch rows only.
    max_batch: StrictInt | None = Field(None, ge=1)
    # build the TensorRT engine for this DLA core of a Jetson with DLA (AGX Orin, Orin NX); the
    # layers DLA cannot run fall back to the GPU. Predicted by roofline-v1+dla (kdc.deploy.dla).
    dla_core: StrictInt | None = Field(None, ge=0)


class VerifyConfig(Section):
    # warm-up calls per session (Olive's default; with 0.2 s besides, the sentiment teacher's p50
    # after 5, 10 and 50 calls agreed within run-to-run noise)
    warmup: int = Field(10, ge=0)
    iterations: int = Field(200, ge=10)
    min_duration_s: float = Field(1.0, ge=0)
    # where a timing stops however few runs it took (a model too slow for 100 runs in it has a
    # p99 budget not judged; raise this, or time it on the device)
    max_duration_s: float = Field(60.0, gt=0)
    threads: int | None = Field(None, ge=1)
    batch: int = Field(1, ge=1)
    rounds: int = Field(3, ge=1)  # interleaved timing rounds over teacher and engines; median kept


class ConstraintsConfig(Section):
    max_accuracy_drop: float | None = Field(None, ge=0, le=1)
    latency_budget_ms: float | None = Field(None, gt=0)
    max_memory_mb: float | None = Field(None, gt=0)
    max_size_mb: float | None = Field(None, gt=0)
    percent_max_degradation: float | None = Field(None, ge=0, le=100)


class KdcConfig(Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Task
    seed: int = Field(0, ge=0)
    teacher: TeacherConfig
    data: DataConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)

    # Set by load_config: where relative paths are resolved, and which file this came from.
    base_dir: str = Field(default=".", exclude=True)
    source_file: str = Field(default="<config>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """An optional section whose keys are all commented out reads as null in YAML: its
        defaults, as if it were left out."""
        if not isinstance(data, dict):
            return data
        optional = {k for k, f in cls.model_fields.items() if f.default_factory is not None}
        return {k: {} if v is None and k in optional else v for k, v in data.items()}

    def resolve(self, rel: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        return resolve_path(rel, self.base_dir)

    def split_seed(self) -> int:
        """The seed of the held-out eval split: `data.split_seed`, else `seed`."""
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def fingerprint(self) -> dict:
        """The config as data, for hashing: excludes where it was read from."""
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        """Hash of the whole config: what the manifest and report.json record as the run's."""
        return sha256_json(self.fingerprint())


def _fields_of(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (for 'did you mean'); a mapping's keys (`search.space`'s size
    names) are passed over to its values' fields."""
    cur: Any = model
    key = False  # the part after a mapping field is one of its keys
    for part in loc[:-1]:
        if isinstance(part, int) or key:
            key = False
            continue
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        key = get_origin(ann) is dict
        args = getattr(ann, "__args__", ())
        cands = [ann, *args, *[a for t in args for a in getattr(t, "__args__", ())]]
        cur = next((c for c in cands if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cur is None:
            return []
    return list(getattr(cur, "model_fields", {}))


def _fix_for(err: dict, loc: tuple, model: type[BaseModel], default: str) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _fields_of(model, loc), n=1)
        return f"did you mean '{close[0]}'?" if close else "remove this key"
    if kind == "missing":
        return "add this key"
    if kind == "literal_error":
        return f"use one of {err.get('ctx', {}).get('expected', '')}"
    return default


def _union_tag(part: Any) -> bool:
    """Whether a location part names the member of a union pydantic tried (`int`,
    `list[int]`), not a field: `student.layers.int` is `student.layers`."""
    return isinstance(part, str) and ("[" in part or part in ("int", "str", "float", "bool"))


def _field_loc(err: Any) -> tuple:
    """An error's location without the union members pydantic tried."""
    return tuple(p for p in err["loc"] if not _union_tag(p))


def describe_error(
    e: ValidationError, model: type[BaseModel], default_fix: str
) -> tuple[str, str, str]:
    """(message, field, fix) of a validation error: an unknown key first (a misspelt key also
    leaves its real name missing; the typo is the one to name), else the first error; of a
    union's members, the one whose type the value has (a {min, max} range's fault, not that a
    list was expected)."""
    errors = e.errors()
    first = errors[0]
    of_type = (
        x for x in errors if _field_loc(x) == _field_loc(first) and x["type"] == "value_error"
    )
    err = next((x for x in errors if x["type"] == "extra_forbidden"), next(of_type, first))
    loc = _field_loc(err)
    field = field_path(loc) or "<root>"
    msg = err["msg"].replace("\n", " ").removeprefix("Value error, ")
    return msg, field, _fix_for(err, loc, model, default_fix)


def parse_config(data: Any, source: str = "<config>", base_dir: str | Path = ".") -> KdcConfig:
    """Validate a mapping as a KdcConfig; raise ConfigError naming the first bad field."""
    if not isinstance(data, dict):
        raise ConfigError(
            "the file must hold a YAML mapping",
            source=source,
            fix="start from examples/digits/model.yaml",
        )
    try:
        cfg = KdcConfig.model_validate(data)
    except ValidationError as e:
        msg, field, fix = describe_error(
            e, KdcConfig, "see the configuration reference in README.md"
        )
        raise ConfigError(msg, source=source, field=field, fix=fix) from None
    cfg.base_dir = str(Path(base_dir).resolve())
    cfg.source_file = source
    return cfg


def load_config(path: str | Path) -> KdcConfig:
    """Read and validate model.yaml; every failure is a one-line ConfigError."""
    path = Path(path)
    if path.is_dir():
        model = (path / "config.json").is_file()
        raise ConfigError(
            f"is {'a model directory' if model else 'a directory'}, not a kdc config",
            source=str(path),
            fix=f"pass the path of a model.yaml (`kdc init {path} --data DATA` writes one)"
            if model
            else "pass the path of a model.yaml",
        )
    if not path.is_file():
        raise ConfigError("file not found", source=str(path), fix="pass the path of a model.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(
            f"not valid YAML{where}", source=str(path), fix="check indentation and quoting"
        ) from None
    hf_keys = {"architectures", "model_type"}
    if isinstance(data, dict) and hf_keys & set(data) and "name" not in data:
        raise ConfigError(
            "is a Hugging Face model config (config.json), not a kdc config",
            source=str(path),
            fix=f"give its directory as teacher.path in a model.yaml (`kdc init {path.parent} "
            "--data DATA` writes one)",
        )
    return parse_config(data, source=str(path), base_dir=path.parent)
