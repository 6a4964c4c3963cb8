"""The report as sections of tables and bullet lines, rendered to Markdown (HTML reuses them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdc.deploy.constraints import (
    engine_label,
    engine_status,
    latencies,
    shipped_engine,
    ungated,
    value_kind,
    verdict,
)
from kdc.deploy.report_cells import (
    DASH,
    accuracy_cells,
    accuracy_text,
    arch_text,
    by_kind,
    conditions,
    constraint_name,
    heading_conditions,
    latency_text,
    measured_cell,
    measured_on,
    memory_cell,
    model_size_cell,
    num,
    off_target_devices,
    parity_text,
    sig,
    size_cell,
)

Table = tuple[list[str], list[list[str]]]


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    table: Table | None = None


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
    predicted = [by_kind(part, "predicted") for _, _, part, _, _ in named]
    model = f" ({latency_model(report)})" if any(predicted) else ""  # as the console's heading
    head = [
        "model",
        "status",
        "precision",
        "accuracy",
        "accuracy from",
        "latency measured" + measured_on(hosts) + heading_conditions([*measured.values()], hosts),
        "latency predicted" + model + heading_conditions(predicted, []),
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
            *accuracy_cells(part, task, label),
            measured_cell(report, measured[id(part)], bool(hosts)),
            latency_text(by_kind(part, "predicted")),
            size_cell(part),
            memory_cell(part),
            model_size_cell(part),
            parity_text(part.get("parity")),
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
        how += f", weights {q['weights']}" if q.get("weights") else ""  # QAT's too
        how += f", activations {q['activations']}" if q.get("activations") else ""
        choice = q.get("backend_choice") or {}
        if choice.get("loss"):
            timed, dev = choice.get("latency") or {}, choice.get("deviation") or {}
            p50 = {b: t["p50_ms"] for b, t in timed.items()}
            tried = " and ".join(
                f"{b} (loss {loss:g}"
                + (f", deviation {sig(dev[b])}" if b in dev else "")
                + (f", p50 {sig(p50[b])} ms)" if b in p50 else ")")
                for b, loss in choice["loss"].items()
            )
            measure = (q.get("loss") or {}).get("measure")
            how += f"; ptq: auto compared {tried}" + (f", loss: {measure}" if measure else "")
            how += ", deviation: RMS(INT8 - FP32 outputs) / RMS(FP32 outputs)" * bool(dev)
            t = next(iter(timed.values()), {})  # timed alike: one device, batch, threads
            if t.get("details"):  # an earlier build's, which recorded neither device nor batch
                n = t.get("threads")
                how += "; p50 measured" + (f" at {n} thread{'s' * (n != 1)}" if n else "")
                how += (f", {t['protocol']}" if t.get("protocol") else "") + f"; {t['details']}"
            elif t:
                how += (
                    f"; p50 measured on {t.get('device', DASH)} at batch {t.get('batch', DASH)}, "
                    f"{t.get('protocol', DASH)}"
                )
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
            f"{arch_text(c.get('architecture'))} {sig(c.get('predicted_latency_ms'))} ms"
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
            arch_text(p.get("architecture")),
            num(p.get("proxy")),
            sig(p.get("predicted_latency_ms")),
            "yes" if p.get("chosen") or p.get("architecture") == student_arch else "",
        ]
        for i, p in enumerate(sorted(pareto, key=lambda p: p.get("predicted_latency_ms", 0)), 1)
    ]
    latency = "predicted latency ms" + (f" ({model})" if model else "")
    # no accuracy column: the search scores candidates by the proxy alone (candidates.jsonl holds
    # none); the chosen student's accuracy, once distilled, is in the models table
    head = ["#", "architecture", "proxy", latency, "chosen"]
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


def _invocation(run: dict) -> str:
    """`, this command 28.1 s to its report (ran verify, report)`: the real wall time of the
    command that wrote the report, where recorded (skipped stages took it no time)."""
    inv = run.get("invocation") or {}
    if inv.get("wall_s") is None:
        return ""
    ran = ", ".join(inv.get("stages_run") or []) or DASH
    return f", this command {num(inv['wall_s'], 1)} s to its report (ran {ran})"


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
        f"wall time {num(run.get('wall_s'), 1)} s (sum of its stages){_invocation(run)}",
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
