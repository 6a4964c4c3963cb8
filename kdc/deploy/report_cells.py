"""One figure of the report as text, a table cell or a conditions line: numbers, accuracies with
their engine, latencies with their conditions, memory, sizes and parity (report_md lays them out
in sections)."""

from __future__ import annotations

from kdc.deploy.constraints import (
    accuracy_value,
    at_batch,
    headline_latency,
    latencies,
    on_dla_core,
)

DASH = "–"


def num(value: float | None, digits: int = 4) -> str:
    """A number with `digits` decimals, or a dash when absent."""
    return DASH if value is None else f"{value:.{digits}f}"


def sig(value: float | None) -> str:
    """A size or latency to 3 significant figures (`0.0381`, `4.18`), whole from 100 up, or a
    dash when absent."""
    if value is None:
        return DASH
    return f"{value:.0f}" if abs(value) >= 99.95 else f"{value:#.3g}"


def accuracy_text(acc: dict | None, task: str | None = None) -> str:
    """`0.8021 accuracy (n=379)`, or a dash."""
    metric, value = accuracy_value(acc, task)
    if value is None:
        return DASH
    n = f" (n={acc['n']})" if acc.get("n") is not None else ""
    return f"{value:.4f} {metric}{n}"


def latency_text(lat: dict | None) -> str:
    """`3.10 ms p50 / 3.90 ms p99` for a measured object (its p50 is what a prediction is
    comparable with, its p99 what constraints judge), `0.530 ms p50` for a predicted one."""
    if not lat:
        return DASH
    value, stat = headline_latency(lat)
    if value is None:
        return DASH
    p50 = lat.get("p50_ms") if stat != "p50" else None
    head = f"{sig(p50)} ms p50 / " if p50 is not None else ""
    return head + f"{sig(value)} ms {stat}{on_dla_core(lat)}"


def off_target(report: dict, lat: dict) -> bool:
    """Whether `lat` was timed on another machine than the report's target (the host, when the
    target is not this machine and the figure is not a device result)."""
    return (
        (report.get("target") or {}).get("measurable") is False
        and lat.get("kind") == "measured"
        and not lat.get("on_target")
    )


def off_target_devices(report: dict, lats: list[dict | None]) -> list[str]:
    """The devices, other than the target, that timed these latency objects."""
    return sorted(
        {lat.get("device", "another machine") for lat in lats if lat and off_target(report, lat)}
    )


def measured_on(hosts: list[str]) -> str:
    """` on <device> (not the target)` for a heading of latencies timed off the target."""
    return f" on {', '.join(hosts)} (not the target)" if hosts else ""


def heading_conditions(lats: list[dict | None], hosts: list[str]) -> str:
    """What a table's latency heading adds for its timings or predictions: the device that
    timed them where it is the target (this machine; `measured_on` names another), and their
    batch where it is not 1."""
    got = [lat for lat in lats if lat]
    devices = sorted({lat["device"] for lat in got if lat.get("device")})  # measured ones
    batches = {lat.get("batch") for lat in got}
    where = f" on {', '.join(devices)}" if devices and not hosts else ""
    return where + (at_batch(batches.pop()) if len(batches) == 1 else "")


def constraint_name(c: dict) -> str:
    """A constraint's name with the unit its memory figures are in (MiB; sizes are MB)."""
    return f"{c['name']} (MiB)" if c["name"] == "memory_mb" else c["name"]


def by_kind(part: dict, kind: str) -> dict | None:
    """The first latency object of `kind` ("measured"/"predicted") of a model part; a TensorRT
    engine timed on the device shows the prediction it keeps beside (`predicted_latency`)."""
    found = next((lat for _, lat in latencies(part) if lat.get("kind") == kind), None)
    kept = part.get("predicted_latency") if kind == "predicted" else None
    return found or (kept if isinstance(kept, dict) else None)


# Optional facts some latency objects carry (device results, ONNX Runtime), shown when present.
EXTRAS = {
    "provider": "provider {}",
    "tensorrt": "TensorRT {}",
    "protocol": "protocol: {}",
    "note": "note: {}",
    "padding": "attention-mask padding {:.0%}",
}


def _warmup(lat: dict) -> str:
    """`warm-up 50` (calls), or a duration's with the calls it held where recorded (trtexec)."""
    count, ms = lat.get("warmup"), lat.get("warmup_ms")
    if ms is None:
        return f"warm-up {DASH if count is None else count}"
    return f"warm-up {ms} ms" + ("" if count is None else f" ({count} runs)")


def _threads(lat: dict) -> str:
    """`threads 2`, or why a timing has no CPU thread count (a GPU engine's)."""
    if lat.get("threads") is not None:
        return f"threads {lat['threads']}"
    return f"threads {DASH}" + (f" ({lat['threads_note']})" if lat.get("threads_note") else "")


def _input_shape(lat: dict) -> list[str]:
    """`input input_ids/attention_mask 1×16` (inputs of one shape named together), or none."""
    shapes = lat.get("input_shape")
    if not isinstance(shapes, dict) or not shapes:
        return []
    by_shape: dict[str, list[str]] = {}
    for name, dims in shapes.items():
        by_shape.setdefault("×".join(map(str, dims)), []).append(name)
    return ["input " + "; ".join(f"{'/'.join(n)} {s}" for s, n in by_shape.items())]


def conditions(lat: dict) -> str:
    """The conditions a latency figure holds under, as one line."""
    common = [
        f"engine {lat.get('engine', DASH)}",
        *_dla(lat),
        f"precision {lat.get('precision', DASH)}",
        f"batch {lat.get('batch', DASH)}",
        *_input_shape(lat),
    ]
    extras = [fmt.format(lat[k]) for k, fmt in EXTRAS.items() if lat.get(k)]
    if lat.get("kind") == "measured":
        cv = lat.get("cv")
        pct = "/".join(sig(lat.get(f"p{p}_ms")) for p in (50, 90, 99))
        return ", ".join(
            [
                f"device {lat.get('device', DASH)}",
                *common,
                _threads(lat),
                _warmup(lat),
                f"iterations {lat.get('iterations', DASH)}",
                f"p50/p90/p99 {pct} ms",
                f"cv {DASH if cv is None else f'{cv:.1%}'}",
                *extras,
            ]
        )
    return ", ".join(
        [
            f"model {lat.get('model', DASH)}",
            f"calibrated from {lat.get('calibrated_from', DASH)}",
            *common,
            f"p50 {sig(lat.get('p50_ms'))} ms (not timed)",
            *extras,
        ]
    )


def _dla(lat: dict) -> list[str]:
    """`DLA core N` for an engine built for one, with a prediction's kernel placement."""
    if lat.get("dla_core") is None:
        return []
    placed = (
        f" ({lat['dla_kernels']} kernels on the DLA, {lat.get('gpu_fallback_kernels', DASH)} "
        f"on the GPU by GPU fallback, {lat.get('transitions', DASH)} switches)"
        if "dla_kernels" in lat
        else ""
    )
    return [f"DLA core {lat['dla_core']}{placed}"]


def parity_text(parity: dict | None) -> str:
    """`0.00012 / 0.99998` (max-abs / mean row cosine); beyond atol/rtol, the row cosine the
    floor judges (the lowest, or for an INT8 engine the mean, then the lowest); a device's
    check (one cosine over all outputs) adds its verdict and runner:
    `... (device, tensorrt: PASS; cosine of all outputs)`."""
    if not parity:
        return DASH
    text = f"{sig(parity.get('max_abs'))} / {num(parity.get('cosine'), 5)}"
    if parity.get("within_tolerance") is False and not parity.get("on_target"):
        ok = "PASS" if parity.get("passed") else "FAIL"
        judged, tail = f"lowest row cosine {num(parity.get('min_cosine'), 5)}", ""
        if parity.get("cosine_judged") == "mean":  # the lowest then follows the verdict
            judged, tail = f"mean row cosine {num(parity.get('cosine'), 5)}", f"; {judged}"
        if "agreement_floor" in parity:
            judged += (
                f", class agreement {100 * parity.get('argmax_agreement', 0):.1f} % "
                f"(floor {100 * parity['agreement_floor']:.0f} %)"
            )
        text += f" (beyond atol/rtol; {judged}, floor {parity.get('cosine_floor')}: {ok}{tail})"
    if parity.get("on_target"):
        ok = "PASS" if parity.get("passed") else "FAIL"
        text += f" (device, {parity.get('runner') or 'no runner'}: {ok}; cosine of all outputs)"
    return text


def arch_text(arch: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (arch or {}).items()) or DASH


def accuracy_cells(part: dict, task: str | None, label: str) -> list[str]:
    """[accuracy, accuracy from]; an engine not run here may show a labelled proxy. The accuracy
    of the kernels whose latency was measured here follows when it is not the headline's."""
    acc = part.get("accuracy")
    if accuracy_value(acc, task)[1] is not None:
        cells = [accuracy_text(acc, task), acc.get("engine", label)]
        cpu = part.get("accuracy_this_cpu")
        if accuracy_value(cpu, task)[1] is not None:
            cells[0] += f"; {accuracy_text(cpu, task)} on this CPU's int8 kernels (timed here)"
            cells[1] += f"; {cpu.get('engine', DASH)}"
        return cells
    proxy = part.get("accuracy_proxy")
    if accuracy_value(proxy, task)[1] is not None:
        return [
            f"≈ {accuracy_text(proxy, task)}",
            f"proxy: {proxy.get('engine', 'another engine')} on the same ONNX",
        ]
    return [DASH, DASH]


def memory_cell(part: dict) -> str:
    """Measured peak RSS of the process running the engine here and/or its predicted peak on the
    target (MiB), each labelled (a prediction with its memory model)."""
    cells = []
    for mem in (part.get("memory"), part.get("target_memory")):
        if not isinstance(mem, dict):
            continue
        if mem.get("kind") == "measured" and mem.get("peak_rss_mb") is not None:
            cells.append(f"{sig(mem['peak_rss_mb'])} measured peak RSS")
        elif mem.get("kind") == "predicted" and mem.get("peak_mb") is not None:
            model = f" ({mem['model']})" if mem.get("model") else ""
            cells.append(f"{sig(mem['peak_mb'])} predicted{model}{at_batch(mem.get('batch'))}")
    return "; ".join(cells) or DASH


def model_size_cell(part: dict) -> str:
    """`params; FLOPs` of a teacher or student (what report.json records), else a dash."""
    cells = [f"{part['params']:,}"] if part.get("params") else []
    if flops := part.get("flops"):
        scale, unit = (1e9, "G") if flops >= 1e9 else (1e6, "M")
        cells.append(f"{sig(flops / scale)} {unit}FLOPs")
    return "; ".join(cells) or DASH


def size_cell(part: dict) -> str:
    size = sig(part.get("size_mb"))
    return f"{size} ({part['size_note']})" if part.get("size_note") and size != DASH else size


def measured_cell(report: dict, lat: dict | None, elsewhere: bool) -> str:
    """The measured latency; `elsewhere` (the column names another device) marks a device
    result as timed on the target, naming the device that timed it."""
    on_target = elsewhere and lat is not None and not off_target(report, lat)
    return latency_text(lat) + (
        f" (on the target: {lat.get('device', 'the device')})" if on_target else ""
    )
