"""Read back what `bench.sh` measured on the device: a measured latency object (the keys of a
host-measured one: `threads` null for an engine no CPU threads run, `warmup` the count trtexec
logged beside the `warmup_ms` it warmed up for), the parity the device checked, and warnings.
Results measured for another target than the run's are refused."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from kdc.deploy.constraints import not_the_engine
from kdc.deploy.trtexec import CV_LIMIT, WARMUP_MS, bench_protocol, parse_export_times
from kdc.errors import UserError
from kdc.profiles import list_profiles

_FIX = "run bench.sh on the device and copy its results/ directory back"
_NUMBERS = ("n", "max_abs", "mean_abs", "cosine", "cosine_min_row", "argmax_agreement")
# what trtexec logs after its warm-up (its samples/common/sampleReporting.cpp, printProlog)
_WARMUP_LOGGED = re.compile(r"Warmup completed (\d+) queries over (\d+(?:\.\d+)?) ms")


def read_object(path: Path, fix: str = _FIX) -> dict:
    """A JSON object file of a device's results or a bundle; a UserError naming `fix` else."""
    if not path.is_file():
        raise UserError("file not found", source=str(path), fix=fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"corrupt JSON ({e})", source=str(path), fix=fix) from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", source=str(path), fix=fix)
    return data


def trt_version_from_banner(banner: str) -> str | None:
    """'TensorRT v100300' -> '10.3.0'; 'TensorRT v8601' -> '8.6.1' (trtexec's version tag)."""
    m = re.search(r"v(\d+)", banner or "")
    if not m:
        return None
    n = int(m.group(1))
    major, rest = (n // 10000, n % 10000) if n >= 100000 else (n // 1000, n % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _profile_words(name: str) -> set[str]:
    """`jetson-orin-nano-8gb` -> {jetson, orin, nano}: the words its device's name holds."""
    skip = {"nvidia", "sxm", "pcie"}
    return {w for w in name.split("-") if w not in skip and not re.fullmatch(r"\d+gb", w)}


def profiles_of_device(device: str) -> list[str]:
    """Built-in TensorRT profiles whose name words all occur in a device name: `NVIDIA Jetson
    Orin Nano Developer Kit` -> [jetson-orin-nano-8gb], `Tesla T4` -> [nvidia-t4]."""
    words = set(re.findall(r"[a-z0-9]+", device.lower()))
    return [
        p.name for p in list_profiles() if p.runtime.tensorrt and _profile_words(p.name) <= words
    ]


def _check_target(
    results_dir: Path, meta_file: Path, meta: dict, device: dict, target: str
) -> None:
    """Refuse results whose bundle, recorded profile, model or device is not the run's."""
    bundle = meta.get("profile")
    if bundle != target:
        raise UserError(
            f"the bundle is for {bundle}, the verification for {target}",
            source=str(meta_file),
            field="profile",
            fix=f"verify for the bundle's target (kdc verify RUN --target {bundle}), or, if "
            f"{target} runs TensorRT, time a bundle written for it (kdc bundle RUN --target "
            f"{target}) on a {target}",
        )
    source = str(results_dir / "device.json")
    for key in ("profile", "onnx_sha256"):  # bench.sh records both from bundle.json
        if not device.get(key):
            raise UserError(
                f"names no {key}: these results were not written by the bundle's bench.sh, so "
                "kdc cannot tell which target and model they measured",
                source=source,
                field=key,
                fix=f"run {meta_file.parent.name}/bench.sh on the device and pass its results/",
            )
    recorded = device.get("profile")
    if recorded != target:
        raise UserError(
            f"measured with a bundle for {recorded}, the verification is for {target}",
            source=source,
            field="profile",
            fix=f"pass the results/ of the bundle in {meta_file.parent}, timed on a {target}",
        )
    sha = device.get("onnx_sha256")
    if meta.get("onnx_sha256") and sha != meta["onnx_sha256"]:
        raise UserError(
            "measured another model.onnx than the run's bundle holds",
            source=source,
            field="onnx_sha256",
            fix=f"copy {meta_file.parent} to the device again, run build.sh and bench.sh",
        )
    for key in ("build_command", "bench_command"):  # an earlier bench.sh recorded neither
        ran = device.get(key)
        if ran is not None and ran != meta.get(key):
            raise UserError(
                f"timed an engine built or run otherwise than this bundle says (its {key} was "
                f"{' '.join(map(str, ran))}): the bundle was written again since, e.g. for another "
                "batch, DLA core or build.max_batch",
                source=source,
                field=key,
                fix=f"copy {meta_file.parent} to the device again, run build.sh and bench.sh",
            )
    check_device(str(device.get("device") or ""), target, source, f"run the bundle on a {target}")


def check_device(device: str, target: str, source: str, fix: str) -> None:
    """Refuse timings made on a `device` that is another built-in target's than `target` (a
    copy of a built-in profile, another power mode say, may be timed on its device)."""
    named = profiles_of_device(device)
    if named and target not in named and target in {p.name for p in list_profiles()}:
        raise UserError(
            f"device '{device}' matches {' or '.join(named)}, not {target}",
            source=source,
            field="device",
            fix=fix,
        )


def _device_parity(
    raw: dict, floor: float, device: str, source: Path, min_agreement: float | None = None
) -> dict:
    """parity.json in the report's parity terms (`min_cosine` the lowest row cosine,
    `cosine_floor` the bundle's limit, `passed`: at or above it, by the TensorRT engine), marked
    `on_target`. A pass without the figures parity.py writes with one is refused; NaN or Inf
    figures of a failed check (an engine whose outputs overflowed) fail it, saying so."""
    broken = []
    for key in _NUMBERS:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"'{key}' is not a number", source=str(source), field=key, fix=_FIX)
        if not math.isfinite(value):
            if raw.get("pass") is True:
                raise UserError(
                    f"'{key}' is not a finite number", source=str(source), field=key, fix=_FIX
                )
            broken.append(key)
    if broken:
        raw = {**raw, **dict.fromkeys(broken)}
        raw["error"] = raw.get("error") or (
            f"the engine's outputs are not finite ({', '.join(broken)} NaN or Inf; e.g. an FP16 "
            "overflow)"
        )
    if not isinstance(raw.get("pass", False), bool):
        raise UserError("'pass' is not true/false", source=str(source), field="pass", fix=_FIX)
    for key in ("runner", "error"):
        if not isinstance(raw.get(key) or "", str):
            raise UserError(f"'{key}' is not text", source=str(source), field=key, fix=_FIX)
    missing = [k for k in ("runner", *_NUMBERS) if raw.get("pass") is True and raw.get(k) is None]
    if missing:
        raise UserError(
            f"a pass without its figures: {', '.join(missing)} missing",
            source=str(source),
            field=missing[0],
            fix=_FIX,
        )
    notes = raw.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise UserError(
            "'notes' is not a list of text", source=str(source), field="notes", fix=_FIX
        )
    cosine, runner = raw.get("cosine"), raw.get("runner")
    batches = raw.get("batches", {})
    if not isinstance(batches, dict) or not all(str(k).isdecimal() for k in batches):
        raise UserError(
            "'batches' is not an object keyed by batch size",
            source=str(source),
            field="batches",
            fix=_FIX,
        )
    failed_batches = [k for k, c in batches.items() if not (isinstance(c, dict) and c.get("pass"))]
    parity = {
        "reference": "goldens.npz",
        "on_target": True,
        "device": device,
        "runner": runner,
        "n": raw.get("n"),
        "max_abs": raw.get("max_abs"),
        "mean_abs": raw.get("mean_abs"),
        "cosine": cosine,
        "min_cosine": raw.get("cosine_min_row"),
        "argmax_agreement": raw.get("argmax_agreement"),
        "cosine_floor": floor,
        "agreement_floor": min_agreement,
        # an engine for a range of batches is checked at its smallest and largest batch too
        "batches_checked": [int(k) for k in batches] or None,
        "failed_batches": failed_batches or None,
        "passed": raw.get("pass") is True
        and not failed_batches
        and cosine >= floor
        and (min_agreement is None or raw["argmax_agreement"] >= min_agreement)
        and runner == "tensorrt",
        "error": raw.get("error"),
        "notes": notes or None,
        "source": f"device results {source}",
    }
    return {k: v for k, v in parity.items() if v is not None}


def _parity_warnings(parity: dict) -> list[str]:
    """A failed check: below the floor, not made, or not made by the TensorRT engine."""
    if parity["passed"]:
        return []
    runner = parity.get("runner")
    notes = "; ".join(parity.get("notes") or [])
    if runner and runner != "tensorrt":
        return [f"device parity FAILED: {not_the_engine(runner, notes)}"]
    if parity.get("failed_batches"):
        return [
            f"device parity FAILED at batch {', '.join(parity['failed_batches'])} (the engine "
            f"takes a range of batches; each checked against the goldens on {parity['device']})"
        ]
    if parity.get("cosine") is not None:
        what = f"cosine {parity['cosine']:.4f} against the floor {parity['cosine_floor']:g}"
        if parity.get("agreement_floor") is not None:
            what += f" (argmax agreement floor {parity['agreement_floor']:g})"
    else:
        what = parity.get("error") or f"not checked ({notes or 'no runner'})"
    agree = parity.get("argmax_agreement")
    rows = f" over {parity['n']} golden rows" if parity.get("n") is not None else ""
    return [
        f"device parity FAILED: {what}"
        + (f", argmax agreement {agree:.3f}" if agree is not None else "")
        + f"{rows} (runner {runner or 'none'} on {parity['device']})"
    ]


def _protocol(meta: dict) -> list[str]:
    """The timing flags the bundle's bench.sh ran (its recorded bench_command), else today's."""
    ran = meta.get("bench_command")
    known = bench_protocol()
    if isinstance(ran, list):
        return [f for f in known if f in ran]
    return list(bench_protocol(meta.get("dla_core")))


def _warmup(results_dir: Path) -> dict:
    """trtexec warms up for a duration, not a count: `warmup_ms` that duration and `warmup` the
    queries it ran in it, as bench.sh's log of trtexec (results/bench.log) says; without that
    line, the duration bench.sh asks for and no count (None: not recorded, never guessed)."""
    try:
        log = (results_dir / "bench.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        log = ""
    m = _WARMUP_LOGGED.search(log)
    if m is None:
        return {"warmup": None, "warmup_ms": WARMUP_MS}
    ms = float(m.group(2))
    return {"warmup": int(m.group(1)), "warmup_ms": int(ms) if ms.is_integer() else ms}


def _threads(dla_core: int | None) -> dict:
    """`threads` of a host timing has no counterpart: the engine runs on the GPU (or a DLA core),
    trtexec without --threads; so null, and why."""
    where = "the GPU" if dla_core is None else f"DLA core {dla_core}"
    return {
        "threads": None,
        "threads_note": f"no CPU thread count: the TensorRT engine runs on {where} "
        "(trtexec without --threads)",
    }


def read_device_results(results_dir: Path | str, bundle_dir: Path | str, target: str) -> dict:
    """`{"latency", "parity", "warnings"}` from the results/ of the bundle in `bundle_dir`.

    Latency is trtexec's per-iteration `latencyMs` with --noDataTransfers, so it excludes
    host<->device copies; a cv above `CV_LIMIT` puts a warning in it. Parity is the device's
    check against the goldens (failed when not run by the TensorRT engine). Warnings (for the
    engine) repeat the latency's and flag a failed parity. Results for another target than `target`
    (the name of the profile verified for), another model or another device are a UserError."""
    results_dir, bundle_dir = Path(results_dir), Path(bundle_dir)
    meta_file = bundle_dir / "bundle.json"
    rewrite = f"write the bundle again: kdc bundle RUN --target {target}"
    meta = read_object(meta_file, fix=rewrite)
    floor = meta.get("parity_min_cosine")
    if isinstance(floor, bool) or not isinstance(floor, int | float):
        raise UserError(
            "no parity floor", source=str(meta_file), field="parity_min_cosine", fix=rewrite
        )
    stats = parse_export_times(results_dir / "times.json")
    raw_parity = read_object(results_dir / "parity.json")
    device = read_object(results_dir / "device.json")
    _check_target(results_dir, meta_file, meta, device, target)
    version = trt_version_from_banner(str(device.get("trtexec", "")))
    name = str(device.get("device") or "unknown (results/device.json names no device)")
    latency = {
        "kind": "measured",
        "device": name,
        "engine": "tensorrt",
        "tensorrt": version or "unknown",
        "precision": meta.get("precision"),
        "batch": meta.get("batch"),
        "input_shape": meta.get("input_shapes", {}),
        **({"dla_core": meta["dla_core"]} if meta.get("dla_core") is not None else {}),
        **_threads(meta.get("dla_core")),
        **_warmup(results_dir),
        **stats,
        "protocol": "trtexec " + " ".join(_protocol(meta)),
        "source": f"device results {results_dir}",
    }
    expected = meta.get("tensorrt_expected")
    if version and expected and version.split(".")[0] != str(expected).split(".")[0]:
        latency["note"] = f"bundle expected TensorRT {expected}, device ran {version}"
    if stats["cv"] > CV_LIMIT:
        latency["warnings"] = [
            f"device latency cv {stats['cv']:.1%} over {stats['iterations']} iterations exceeds "
            f"{CV_LIMIT:.1%}: the timing is noisy; fix the clocks (Jetson: sudo nvpmodel -m "
            "<mode> && sudo jetson_clocks; GPU: sudo nvidia-smi -lgc <MHz>), stop other GPU "
            "work and run bench.sh again"
        ]
    if not device.get("device") or device.get("device") == "unknown":
        latency.setdefault("warnings", []).append(
            "device.json names no device (bench.sh read neither /proc/device-tree/model nor "
            "nvidia-smi): the timing is the bundle's target's only by what you ran it on"
        )
    asked = meta.get("iterations")
    if isinstance(asked, int) and stats["iterations"] < asked:
        latency.setdefault("warnings", []).append(
            f"times.json has {stats['iterations']} iterations, the bundle asked for at least "
            f"{asked}: its p99 rests on fewer samples than planned; run bench.sh as written "
            "(trtexec stopped early or its flags were changed)"
        )
    agree = meta.get("parity_min_agreement")
    agree = agree if isinstance(agree, int | float) and not isinstance(agree, bool) else None
    parity = _device_parity(raw_parity, floor, name, results_dir / "parity.json", agree)
    warnings = [*_parity_warnings(parity), *latency.get("warnings", [])]
    return {"latency": latency, "parity": parity, "warnings": warnings}
