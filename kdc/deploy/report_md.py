"""The report as sections of tables and bullet lines, rendered to Markdown (HTML reuses them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdc.deploy.constraints import (
    accuracy_value,
    at_batch,
    engine_label,
    engine_status,
    headline_latency,
    latencies,
    on_dla_core,
    shipped_engine,
    ungated,
    value_kind,
    verdict,
)

DASH = "–"

Table = tuple[list[str], list[list[str]]]


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    table: Table | None = None


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


def _parity_text(parity: dict | None) -> str:
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


def _arch(arch: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (arch or {}).items()) or DASH


def _accuracy_cells(part: dict, task: str | None, label: str) -> list[str]:
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
    target (MiB), each labelled."""
    cells = []
    for mem in (part.get("memory"), part.get("target_memory")):
        if not isinstance(mem, dict):
            continue
        if mem.get("kind") == "measured" and mem.get("peak_rss_mb") is not None:
            cells.append(f"{sig(mem['peak_rss_mb'])} measured peak RSS")
        elif mem.get("kind") == "predicted" and mem.get("peak_mb") is not None:
            cells.append(f"{sig(mem['peak_mb'])} predicted{at_batch(mem.get('batch'))}")
    return "; ".join(cells) or DASH


def _size_of_model(part: dict) -> str:
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


def _ships(report: dict) -> str:
    """`ships tensorrt-int8`: the engine that ships (a TensorRT target's engine of an FP32
    student is FP16), else the student's precision."""
    shipped = shipped_engine(report)
    what = engine_label(shipped) if shipped else (report.get("student") or {}).get("precision")
    return f"ships {what or DASH}"


def _models(report: dict) -> Section:
    task = report.get("task")
    teacher, student = report.get("teacher") or {}, report.get("student") or {}
    named = [
        (
            "teacher",
            "teacher",
            teacher,
            DASH,
            (teacher.get("latency") or teacher.get("target_latency") or {}).get("precision", DASH),
        ),
        ("student (pytorch)", "pytorch", student, DASH, _ships(report)),
    ]
    named += [
        (
            engine_label(e) + (f" ({e['provider']})" if e.get("provider") else ""),
            engine_label(e),
            e,
            engine_status(e),
            e.get("precision", DASH),
        )
        for e in report.get("engines") or []
    ]
    named = [row for row in named if row[2]]
    measured = {id(part): by_kind(part, "measured") for _, _, part, _, _ in named}
    hosts = off_target_devices(report, list(measured.values()))
    head = [
        "model",
        "status",
        "precision",
        "accuracy",
        "accuracy from",
        "latency measured" + measured_on(hosts) + heading_conditions([*measured.values()], hosts),
        "latency predicted" + heading_conditions([by_kind(r[2], "predicted") for r in named], []),
        "size MB",
        "memory MiB",
        "params; FLOPs (batch 1)",
        "parity (max_abs / cosine)",
    ]
    rows = [
        [
            name,
            status,
            prec,
            *_accuracy_cells(part, task, label),
            measured_cell(report, measured[id(part)], bool(hosts)),
            latency_text(by_kind(part, "predicted")),
            size_cell(part),
            memory_cell(part),
            _size_of_model(part),
            _parity_text(part.get("parity")),
        ]
        for name, label, part, status, prec in named
    ]
    lines = _beside(report) + _quantized_how(report)
    return Section("Teacher, student and engines", lines=lines, table=(head, rows))


BESIDE = {
    "accuracy_this_cpu": "this CPU's int8 kernels (the latency measured here is theirs)",
    "accuracy_qdq_simulated": "Q/DQ executed in float (the quantized model's arithmetic, "
    "without this CPU's int8 kernels)",
}


def _beside(report: dict) -> list[str]:
    """The accuracies kept beside an engine's headline figure, each with its engine."""
    task = report.get("task")
    return [
        f"{engine_label(e)}: {accuracy_text(e[key], task)} from {e[key].get('engine', DASH)}, "
        f"{why}; the table's figure is from {(e.get('accuracy') or {}).get('engine', DASH)}"
        for e in report.get("engines") or []
        for key, why in BESIDE.items()
        if isinstance(e.get(key), dict)
    ]


def _quantized_how(report: dict) -> list[str]:
    """How each INT8 graph was made: quantization-aware training (its scheme and epochs) or PTQ
    (its method, calibration and, under `ptq: auto`, each backend's loss and p50)."""
    lines = []
    for e in report.get("engines") or []:
        q = e.get("quantization")
        if not isinstance(q, dict) or not q.get("method"):
            continue
        if q["method"] == "qat":
            how = (
                f"quantization-aware training, {q.get('epochs', DASH)} epochs of distillation with "
                f"{q.get('scheme', DASH)}"
            )
        else:
            how = f"post-training quantization, {q['method']}"
            if q.get("calibration_rows"):
                how += f" calibrated on {q['calibration_rows']} training rows"
            if q.get("weights"):
                how += f", weights {q['weights']}"
        how += f", activations {q['activations']}" if q.get("activations") else ""
        choice = q.get("backend_choice") or {}
        if choice.get("loss"):
            p50 = choice.get("p50_ms") or {}
            tried = " and ".join(
                f"{b} (loss {loss:g}" + (f", p50 {sig(p50[b])} ms)" if b in p50 else ")")
                for b, loss in choice["loss"].items()
            )
            measure = (q.get("loss") or {}).get("measure")
            how += f"; ptq: auto compared {tried}" + (f", loss: {measure}" if measure else "")
            if p50:
                n = choice.get("threads")
                threads = f"{n} thread{'s' * (n != 1)}" if n else "default threads"
                how += f"; p50 measured here at {threads}, {choice.get('protocol', DASH)}"
        lines.append(f"{engine_label(e)}: made by {how}")
    return lines


def _constraints(report: dict) -> Section:
    rows = [
        [
            constraint_name(c),
            f"{c['limit']:g}",
            DASH if c.get("value") is None else f"{c['value']:g}",
            value_kind(c) or DASH,
            c.get("engine") or DASH,
            "PASS" if c.get("pass") else "FAIL",
            c.get("reason") or c.get("note") or "",
        ]
        for c in report.get("constraints") or []
    ]
    if not rows:
        return Section("Constraints", lines=["No constraints were set."])
    head = ["constraint", "limit", "value", "source", "engine", "result", "reason / note"]
    return Section("Constraints", lines=ungated(report), table=(head, rows))


def _search(report: dict) -> Section | None:
    search = report.get("search")
    if not search:
        return None
    proxy = search.get("proxy") or f"none ({search.get('strategy', 'fixed')} student)"
    lines = [
        f"proxy: {proxy}",
        f"candidates scored: {search.get('candidates_scored', DASH)}",
        f"search wall time: {num(search.get('wall_s'), 1)} s",
    ]
    if search.get("closest"):  # a search that found no student under the budget
        closest = "; ".join(
            f"{_arch(c.get('architecture'))} {sig(c.get('predicted_latency_ms'))} ms"
            for c in search["closest"]
        )
        lines += [
            f"no student under the search limit of {sig(search.get('search_limit_ms'))} ms "
            f"(budget {sig(search.get('budget_ms'))} ms, {search.get('budget_source', DASH)}; "
            f"teacher predicted {sig(search.get('teacher_predicted_latency_ms'))} ms)",
            f"closest predicted: {closest}",
            f"every candidate tried ({search.get('candidates_rejected', DASH)}), with its "
            f"predicted latency: {search.get('rejected', DASH)}",
        ]
    pareto = search.get("pareto") or []
    basis = search.get("latency_model") or {}
    predicted = any(p.get("predicted_latency_ms") is not None for p in pareto)
    # reports from before the search recorded its basis: the run's (one) latency model
    model = basis.get("model") or (latency_model(report) if predicted else None)
    if pareto and model:
        target = report.get("target") or {}
        where = basis.get("target") or target.get("name", DASH)
        calibration = basis.get("calibrated_from") or target.get("latency_model", DASH)
        conditions = ", ".join(
            f"{k} {basis[k]}" for k in ("precision", "batch", "padding") if k in basis
        )
        lines.append(
            f"predicted latency: {model} for {where}, calibrated from {calibration}"
            f"{f' ({conditions})' if conditions else ''} (not timed)"
        )
    student_arch = (report.get("student") or {}).get("architecture")
    rows = [
        [
            str(i),
            _arch(p.get("architecture")),
            num(p.get("proxy")),
            num(p.get("accuracy")),
            sig(p.get("predicted_latency_ms")),
            "yes" if p.get("chosen") or p.get("architecture") == student_arch else "",
        ]
        for i, p in enumerate(sorted(pareto, key=lambda p: p.get("predicted_latency_ms", 0)), 1)
    ]
    latency = "predicted latency ms" + (f" ({model})" if model else "")
    head = ["#", "architecture", "proxy", "accuracy", latency, "chosen"]
    return Section("Search: Pareto front", lines=lines, table=(head, rows) if rows else None)


def latency_model(report: dict) -> str:
    """The latency models of the report's predictions (a DLA engine's differs from the GPU's)."""
    models = [lat.get("model") for _, lat in _timed(report) if lat.get("kind") == "predicted"]
    return ", ".join(dict.fromkeys(m for m in models if m)) or "the target's latency model"


def _timed(report: dict) -> list[tuple[str, dict]]:
    """(name, latency object) of the teacher, the student and every engine, each object: with
    the prediction a device-timed engine keeps (`predicted_latency`), as the tables show it."""
    parts = [
        ("teacher", report.get("teacher") or {}),
        ("student (pytorch)", report.get("student") or {}),
    ]
    parts += [(engine_label(e), e) for e in report.get("engines") or []]
    return [
        (name + (" (for target)" if key != "latency" else ""), lat)
        for name, part in parts
        for key, lat in latencies(part) + _kept_prediction(part)
    ]


def _kept_prediction(part: dict) -> list[tuple[str, dict]]:
    kept = part.get("predicted_latency")
    return [("predicted_latency", kept)] if isinstance(kept, dict) else []


def _conditions(report: dict) -> Section:
    rows = [[name, lat.get("kind", DASH), conditions(lat)] for name, lat in _timed(report)]
    lines = [
        "measured: timed on the named device with the stated warm-up, iterations, "
        "percentiles and coefficient of variation (cv).",
        "predicted: computed by the named latency model, never timed; it reports p50 only.",
    ]
    return Section(
        "Measurement conditions",
        lines=lines,
        table=(["model", "kind", "conditions"], rows) if rows else None,
    )


def timed_on_device(engine: dict) -> bool:
    """Whether an engine's latency is the device's own measurement (bundle results read back)."""
    lat = engine.get("latency") or {}
    return lat.get("kind") == "measured" and bool(lat.get("on_target"))


def warnings(report: dict) -> list[str]:
    """The report's own warnings, engines not built here (unless the device's results for them
    were read back), each engine's and each timing's warnings, each once (a device timing's
    warning is also its engine's, for the console)."""
    out = list(report.get("warnings") or [])
    for e in report.get("engines") or []:
        if e.get("status") != "built" and e.get("reason") and not timed_on_device(e):
            out.append(f"{engine_label(e)} is {e.get('status')}: {e['reason']}")
        out += [f"{engine_label(e)}: {w}" for w in e.get("warnings") or []]
    out += [f"{name}: {w}" for name, lat in _timed(report) for w in lat.get("warnings") or []]
    return list(dict.fromkeys(out))


def header_lines(report: dict) -> list[str]:
    run, target = report.get("run") or {}, report.get("target") or {}
    export = (report.get("student") or {}).get("export") or {}
    exported = (
        [
            f"exported with {export['exporter']} (opset {export.get('opset', DASH)})"
            + (", last layer computes [CLS] only" if export.get("last_layer") == "cls-only" else "")
        ]
        if export.get("exporter")
        else []
    )
    return [
        f"run: {run.get('name', DASH)}",
        f"target: {target.get('name', DASH)}",
        f"result: {verdict(report)}",
        f"task: {report.get('task', DASH)}",
        f"kdc {report.get('kdc_version', DASH)}, started {run.get('started', DASH)}, "
        f"wall time {num(run.get('wall_s'), 1)} s (sum of its stages)",
        f"config sha256 {str(run.get('config_sha256') or DASH)[:12]}, profile sha256 "
        f"{str(target.get('profile_sha256') or DASH)[:12]}",
        *exported,
    ]


def build_sections(report: dict) -> list[Section]:
    """Every section after the header, in reading order."""
    parts = [
        _models(report),
        _constraints(report),
        _search(report),
        _conditions(report),
        Section("Warnings", lines=warnings(report) or ["none"]),
    ]
    return [s for s in parts if s is not None]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    head, rows = table
    out = ["| " + " | ".join(map(_cell, head)) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(map(_cell, r)) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(report: dict) -> str:
    """report.md: header, then each section's bullets and table."""
    out = [f"# kdc report: {(report.get('run') or {}).get('name', DASH)}", ""]
    out += [f"- {line}" for line in header_lines(report)]
    out.append("")
    out.append("![latency vs accuracy](report.png)")
    for s in build_sections(report):
        out += ["", f"## {s.title}", ""]
        out += [f"- {line}" for line in s.lines]
        if s.table:
            out += [""] if s.lines else []
            out.append(markdown_table(s.table))
    return "\n".join(out) + "\n"
