"""Hardware profiles: YAML files in `profiles/` (shipped in the wheel as `kdc/_profiles`), loaded by
name, alias or path; `host` is read from this machine."""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kdc.config import describe_error
from kdc.cpu_flags import has_int8_dot, host_isa, parse_cpuinfo
from kdc.errors import UserError
from kdc.rundir import sha256_json


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _sourced(text: str) -> str:
    if not text.strip():
        raise ValueError("is blank")
    return text


# where a block's figures come from (PROFILES.md: every figure carries its source; one nobody
# could source says so): required, not blank
Source = Annotated[str, AfterValidator(_sourced)]
SOURCE_FIX = (
    "add {field}: where these figures come from (a datasheet or page, a fit such as `kdc "
    "calibrate`'s, the profile they are copied from), or 'unsourced: <why>'"
)


# bounds no device reaches, to catch a figure written in other units (54e12 for 54 TOPS, a
# bandwidth in B/s, a capacity in bytes): the largest GPUs are ~10^4 TOPS, ~10^4 GB/s, ~300 GB
# (an accelerator's capacity in MB: `HardwareProfile._capacity_in_gb`)
Peak = Annotated[float, Field(gt=0, lt=1e5, description="in TFLOPS / TOPS")]
Bandwidth = Annotated[float, Field(gt=0, lt=1e5, description="in GB/s")]


class Compute(_Strict):
    fp32_tflops: Peak
    fp16_tflops: Peak
    int8_tops: Peak
    source: Source


class Memory(_Strict):
    bandwidth_gbps: Bandwidth
    capacity_gb: float = Field(gt=0, lt=1e6)
    source: Source


# runtime fields kdc no longer reads, still in profiles copied from earlier versions: ignored
RETIRED_RUNTIME = ("onnxruntime_providers",)


class Runtime(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in RETIRED_RUNTIME}
        return data

    engines: list[Literal["tensorrt", "onnxruntime"]] = Field(min_length=1)
    tensorrt: str | None = None
    jetpack: str | None = None
    compute_capability: str | None = None
    dla_cores: int = Field(0, ge=0)
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(min_length=1)

    @model_validator(mode="after")
    def _tensorrt_version(self) -> Runtime:
        """A TensorRT target names its version: bundles, lint and the TensorRT 10/11 split read
        it (without it a run stopped at build, after distillation)."""
        if "tensorrt" in self.engines and not self.tensorrt:
            raise ValueError(
                "engines lists tensorrt but no TensorRT version is given: add e.g. "
                "tensorrt: '10.3' (the device's), or drop tensorrt from engines"
            )
        return self

    @field_validator("tensorrt", mode="before")
    @classmethod
    def _quoted(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            raise ValueError(
                f"write it quoted, tensorrt: '{v}' (YAML reads {v} as a number: '10.10' would be "
                "10.1)"
            )
        return v

    @field_validator("tensorrt")
    @classmethod
    def _supported_tensorrt(cls, v: str | None) -> str | None:
        """Refused here, not at the build stage after distillation."""
        from kdc.deploy.tensorrt import typing_for

        if v is not None:
            try:
                typing_for(v)
            except UserError as e:
                raise ValueError(f"{e.message}; {e.fix} (a Jetson: JetPack 6 or later)") from None
        return v


KindSlot = Annotated[
    str, StringConstraints(pattern=r"^(fp32|fp16|int8)_(conv|attention|vector|masked)$")
]
Efficiency = Annotated[float, Field(gt=0, le=1)]


class LatencyModel(_Strict):
    """Factors of the analytic latency model; `source` says how they were obtained."""

    kernel_overhead_us: float = Field(ge=0)
    call_overhead_us: float = Field(
        0.0, ge=0, description="once per inference call: the runtime's fixed cost (kdc calibrate)"
    )
    compute_efficiency: float = Field(gt=0, le=1)
    memory_efficiency: float = Field(gt=0, le=1)
    int8_compute_efficiency: float | None = Field(None, gt=0, le=1)
    fp16_compute_efficiency: float | None = Field(None, gt=0, le=1)
    kind_efficiency: dict[KindSlot, Efficiency] | None = Field(
        None, description="per <precision>_<conv|attention|vector|masked> kernels (kdc calibrate)"
    )
    source: Source  # how the factors were obtained: a fit, another profile's, or defaults


class Dla(_Strict):
    """One DLA core's dense peaks and the factors of its latency model (kdc.deploy.dla)."""

    int8_tops: Peak
    fp16_tflops: Peak
    compute_efficiency: float = Field(gt=0, le=1)
    layer_overhead_us: float = Field(ge=0, description="per layer (kernel) run on the DLA")
    transition_us: float = Field(ge=0, description="per switch between DLA and GPU (reformat)")
    source: Source


class CalibrationFile(BaseModel):
    """What `with_calibration` reads of a calibration file (the rest is a record)."""

    bandwidth_gbps: Bandwidth | None = Field(None, description="what memory_efficiency scales")
    peaks: dict[str, float] | None = None  # the compute peaks the efficiencies are fractions of
    latency_model: LatencyModel | None = None  # None: a DLA fit alone
    dla: Dla | None = None  # kdc calibrate --dla-core


ACCELERATOR_GB = 1024  # an edge or server device's memory at or past this is a figure in MB


class Defaults(_Strict):
    batch: int = Field(1, description="1: kdc times and predicts at the config's verify.batch")
    latency_budget_ms: float | None = Field(None, gt=0)
    max_memory_mb: float | None = Field(None, gt=0)
    channel_divisor: int = Field(8, ge=1)

    @field_validator("batch")
    @classmethod
    def _one(cls, v: int) -> int:
        """A batch here was never read: runs took verify.batch (1 unless set) all the same."""
        if v != 1:
            raise ValueError(
                f"is {v}, but kdc times and predicts at the model config's verify.batch and does "
                "not read a profile's batch: write 1 here and set verify.batch in the config"
            )
        return v


class HardwareProfile(_Strict):
    name: str
    aliases: list[str] = Field(default_factory=list)
    kind: Literal["edge", "server", "cpu"]
    description: str
    compute: Compute
    memory: Memory
    runtime: Runtime
    latency_model: LatencyModel
    dla: Dla | None = None  # per DLA core, for engines built with build.dla_core
    defaults: Defaults = Field(default_factory=Defaults)
    measurable: bool = Field(False, description="True only for the machine kdc runs on")
    _file: str | None = PrivateAttr(None)  # the YAML it was loaded from, if not a shipped one

    @field_validator("memory")
    @classmethod
    def _capacity_in_gb(cls, memory: Memory, info: ValidationInfo) -> Memory:
        """An edge or server accelerator's memory written in MB (8192 for 8 GB) is refused; a
        host's (kind cpu) may be larger than any accelerator's."""
        if info.data.get("kind") != "cpu" and memory.capacity_gb >= ACCELERATOR_GB:
            raise ValueError(
                f"capacity_gb {memory.capacity_gb:g} is more than any accelerator's memory "
                f"(the largest hold ~300 GB): write it in GB, not MB "
                f"({memory.capacity_gb:g} MB = {memory.capacity_gb / 1024:g} GB)"
            )
        return memory

    @model_validator(mode="after")
    def _limit_within_memory(self) -> HardwareProfile:
        limit = self.defaults.max_memory_mb
        if limit is not None and limit > self.capacity_mib:
            raise ValueError(
                f"defaults.max_memory_mb {limit:g} is more than the device's memory "
                f"({self.memory.capacity_gb:g} GB = {self.capacity_mib:g} MiB)"
            )
        return self

    @property
    def capacity_mib(self) -> float:
        """The device's memory in MiB, the unit memory limits are in."""
        return self.memory.capacity_gb * 1024

    def compute_peaks(self) -> dict[str, float]:
        """The compute peaks a calibration's efficiencies are fractions of."""
        return self.compute.model_dump(exclude={"source"})

    @property
    def target_arg(self) -> str:
        """What `--target` takes to load this profile again: its YAML's path, or its name."""
        return self._file or self.name

    @property
    def default_precision(self) -> str:
        return "int8" if "int8" in self.runtime.precisions else self.runtime.precisions[0]

    @property
    def modelled_engine(self) -> str:
        """The engine whose latency the latency model predicts: TensorRT's on a TensorRT target,
        else ONNX Runtime's."""
        return "tensorrt" if self.runtime.tensorrt else "onnxruntime"

    def sha256(self) -> str:
        """Hash of every field: what the manifest and report.json record as the profile's."""
        return sha256_json(self.model_dump(mode="json"))

    def predictor_sha256(self) -> str:
        """Hash of what a latency prediction reads: peaks, bandwidth, precisions and the latency
        model's factors (not descriptions, sources or capacity, which a host's vary with)."""
        return sha256_json(
            {
                "compute": self.compute.model_dump(mode="json", exclude={"source"}),
                "bandwidth_gbps": self.memory.bandwidth_gbps,
                "precisions": self.runtime.precisions,
                "latency_model": self.latency_model.model_dump(mode="json", exclude={"source"}),
            }
        )


def profiles_dir() -> Path:
    """The directory of built-in profiles: inside the installed wheel, else the source tree."""
    packaged = resources.files("kdc").joinpath("_profiles")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "profiles"


def _read(path: Path) -> HardwareProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return HardwareProfile.model_validate(data)
    except UnicodeDecodeError:
        raise UserError(
            "cannot read profile: not UTF-8 text", source=str(path), fix="save it as UTF-8"
        ) from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(
            f"cannot read profile: not valid YAML{where}",
            source=str(path),
            fix="check indentation and quoting",
        ) from None
    except OSError as e:
        raise UserError(
            f"cannot read profile ({e.strerror or e})", source=str(path), fix="check the path"
        ) from None
    except ValidationError as e:
        msg, field, fix = describe_error(
            e, HardwareProfile, "compare with profiles/jetson-orin-nano-8gb.yaml"
        )
        if field.endswith(".source") and fix != "remove this key":  # missing, blank, not text
            if msg in ("Field required", "is blank"):  # not `source: 2023`, a number
                msg = "missing or blank: a profile says where each block of its figures comes from"
            fix = SOURCE_FIX.format(field=field)
        raise UserError(msg, source=str(path), field=field, fix=fix) from None


@lru_cache(maxsize=1)
def _builtin() -> dict[str, HardwareProfile]:
    return {p.stem: _read(p) for p in sorted(profiles_dir().glob("*.yaml"))}


def _takes_a_shipped_name(prof: HardwareProfile) -> bool:
    """A profile YAML named as a shipped profile (or its alias, or host) whose device figures
    differ from it; a copy of it (a run's bundle keeps one, calibrated or not) is that profile."""
    if prof.name in ("host", "cpu"):
        return True
    same = next((b for b in _builtin().values() if prof.name in (b.name, *b.aliases)), None)
    fitted = {"latency_model", "dla"}
    return same is not None and prof.model_dump(exclude=fitted) != same.model_dump(exclude=fitted)


def _refuse_model_config(path: Path, field: str) -> None:
    """A kdc model config (teacher and data sections) given where a profile belongs is a
    UserError saying so, not the first key a profile does not take."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # _read says what is wrong with it
    if isinstance(data, dict) and {"teacher", "data"} <= data.keys():
        raise UserError(
            "is a kdc model config (teacher, data), not a hardware profile",
            source=str(path),
            field=field,
            fix="pass a profile name from `kdc profiles list` or a profile YAML (as "
            "profiles/jetson-orin-nano-8gb.yaml); run the config with `kdc compress "
            f"{path} --target NAME`",
        )


def list_profiles() -> list[HardwareProfile]:
    """Built-in profiles (with their calibrations) plus `host`."""
    return [*(with_calibration(p) for p in _builtin().values()), host_profile()]


def load_profile(name_or_path: str, field: str = "target") -> HardwareProfile:
    """A profile by name, alias (`jetson`), `host`/`cpu`, or a path to a YAML file; `field`:
    the argument it came from, for errors."""
    key = name_or_path.strip()
    if key in ("host", "cpu"):
        return host_profile()
    p = Path(key)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(
                f"profile file {key} not found",
                field=field,
                fix="pass an existing YAML or a name from `kdc profiles list`",
            )
        _refuse_model_config(p, field)
        prof = _read(p)
        if prof.measurable:
            raise UserError(
                "measurable: true is host's alone (PROFILES.md: the one target where latency is "
                "measured); a profile file's target would be judged by timings of this machine",
                source=key,
                field="measurable",
                fix="remove it (to time this machine: --target host)",
            )
        if _takes_a_shipped_name(prof):
            raise UserError(
                f"name '{prof.name}' is a shipped profile's, and the profile differs from it (it "
                "would share that profile's calibration file)",
                source=key,
                field="name",
                fix="give the profile a name of its own",
            )
        prof._file = str(p.resolve())  # commands printed for it work from any directory
        return with_calibration(prof)
    for prof in _builtin().values():
        if key == prof.name or key in prof.aliases:
            return with_calibration(prof)
    import difflib

    names = sorted([*_builtin(), "host"])
    aliases = sorted({a for prof in _builtin().values() for a in prof.aliases} | {"cpu"})
    near = difflib.get_close_matches(key, [*names, *aliases], n=1, cutoff=0.6)
    raise UserError(
        f"unknown target '{key}'" + (f" (did you mean '{near[0]}'?)" if near else ""),
        field=field,
        fix=f"use one of {', '.join(names)} (aliases {', '.join(aliases)}) or a path to a "
        "profile YAML",
    )


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, set[str]]:
    """This machine's CPU model name and feature flags (read once)."""
    return parse_cpuinfo(_text_of("/proc/cpuinfo"), _text_of("/proc/device-tree/model"))


def _text_of(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def host_has_int8_dot() -> bool:
    """`has_int8_dot` for this machine's CPU."""
    return has_int8_dot(cpu_info()[1])


def host_threads() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def host_profile() -> HardwareProfile:
    """This machine as a target: peaks estimated from cores and ISA (vector width x 2 FMA units x
    an assumed 2.5 GHz), efficiency factors from a calibration file if `kdc calibrate` wrote one."""
    return with_calibration(uncalibrated_host())


@lru_cache(maxsize=1)
def uncalibrated_host() -> HardwareProfile:
    """`host_profile` without a calibration file's latency model (which it may refuse): what a
    check of the config alone reads of host (`kdc validate`)."""
    model, flags = cpu_info()
    cores = host_threads()
    isa = host_isa(flags)
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    ghz = 2.5
    fp32 = cores * lanes * 2 * 2 * ghz / 1000  # TFLOPS: lanes x FMA(2) x 2 units
    # ONNX Runtime's QDQ int8 engines ran 1.6-2x their FP32 graphs with VNNI/AMX and 1.0-1.6x
    # without (bench/HISTORY.md): 2x / 1x keep an uncalibrated int8 prediction on the safe side
    # (4x / 2x under-predicted the sentiment example's INT8 student 1.3x at 2 threads)
    int8_mult = 2 if has_int8_dot(flags) else 1
    src = (
        f"estimated from /proc/cpuinfo: {cores} cores, {'/'.join(isa) or 'no SIMD flags'}, "
        f"assumed {ghz} GHz; not a datasheet figure"
    )
    profile = {
        "name": "host",
        "aliases": ["cpu"],
        "kind": "cpu",
        "description": f"{model} ({cores} thread{'s' * (cores != 1)}), the machine kdc runs on",
        "compute": {
            "fp32_tflops": fp32,
            "fp16_tflops": fp32,
            "int8_tops": fp32 * int8_mult,
            "source": src,
        },
        "memory": {
            "bandwidth_gbps": 100.0,
            "capacity_gb": _mem_gb(),
            "source": "capacity from /proc/meminfo; bandwidth an assumed 100 GB/s (caches in)",
        },
        "runtime": {"engines": ["onnxruntime"], "precisions": ["fp32", "int8"]},
        "latency_model": {
            "kernel_overhead_us": 8.0,
            "compute_efficiency": 0.25,
            "memory_efficiency": 0.5,
            "source": "defaults (run `kdc calibrate --target host`)",
        },
        "defaults": {"batch": 1, "channel_divisor": 8},
        "measurable": True,
    }
    return HardwareProfile.model_validate(profile)


LEGACY_HOST_BANDWIDTH = 20.0
"""The host bandwidth kdc assumed before calibration files saved theirs (device profiles' figures
have not changed, so their older files stay valid)."""


def with_calibration(profile: HardwareProfile) -> HardwareProfile:
    """`profile` with the latency model `kdc calibrate` saved for it, when there is one."""
    cal = calibration_path(profile.name)
    if not cal.is_file():
        return profile
    doc = _read_calibration(cal, _recalibrate(profile))
    fitted_to = doc.bandwidth_gbps or (LEGACY_HOST_BANDWIDTH if profile.measurable else None)
    if fitted_to is not None and fitted_to != profile.memory.bandwidth_gbps:
        raise UserError(
            f"calibration was fitted to an assumed bandwidth of {fitted_to:g} GB/s, the "
            f"profile now assumes {profile.memory.bandwidth_gbps:g} (the profile was edited, "
            "or an older kdc)",
            source=str(cal),
            field="bandwidth_gbps",
            fix=f"delete the file and fit again: {_recalibrate(profile)}",
        )
    now = profile.compute_peaks()
    if not profile.measurable and doc.peaks is not None and doc.peaks != now:
        differ = ", ".join(
            f"{k} {doc.peaks.get(k)} -> {v}" for k, v in now.items() if doc.peaks.get(k) != v
        )
        raise UserError(
            f"calibration was fitted to other compute peaks than the profile's ({differ}): its "
            "efficiencies are fractions of those",
            source=str(cal),
            field="compute",
            fix=f"delete the file and fit again: {_recalibrate(profile)}",
        )
    fitted = {"latency_model": doc.latency_model, "dla": doc.dla}
    return profile.model_copy(update={k: v for k, v in fitted.items() if v is not None})


def _recalibrate(profile: HardwareProfile) -> str:
    """The commands that fit `profile` again."""
    if profile.measurable:
        return f"`kdc calibrate --target {profile.name}`"
    return (
        f"`kdc calibrate --target {profile.target_arg} --bundle DIR` (with `--dla-core N` for the "
        "DLA), "
        "run_all.sh on the device, then `--from DIR`"
    )


def _read_calibration(cal: Path, recalibrate: str) -> CalibrationFile:
    fix = f"delete the file (to fit again: {recalibrate})"
    try:
        doc = CalibrationFile.model_validate(yaml.safe_load(cal.read_text(encoding="utf-8")))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e).splitlines()[0]
        raise UserError(f"calibration file is corrupt: {why}", source=str(cal), fix=fix) from None
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(
            f"calibration file is corrupt: {err['msg'] if err['loc'] else 'not a YAML mapping'}",
            source=str(cal),
            field=".".join(str(p) for p in err["loc"]) or None,
            fix=fix,
        ) from None
    if doc.latency_model is None and doc.dla is None:
        raise UserError(
            "calibration file is corrupt: it holds no fit (no latency_model, no dla)",
            source=str(cal),
            field="latency_model",
            fix=fix,
        )
    return doc


def _mem_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 8.0


def calibration_path(profile_name: str) -> Path:
    """Where `kdc calibrate` stores fitted factors for a profile (user config dir)."""
    base = Path(
        os.environ.get("KDC_CONFIG_DIR")
        or Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "kdc"
    )
    return base / "calibration" / f"{profile_name}.yaml"
