"""Write report.json/.md/.png/.html into a run directory, and the terminal summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from kdc.deploy.constraints import (
    accuracy_value,
    checked_nothing,
    engine_label,
    engine_status,
    stand_in,
    ungated,
    value_and_engine,
    verdict,
)
from kdc.deploy.report_cells import (
    DASH,
    accuracy_text,
    by_kind,
    constraint_name,
    heading_conditions,
    latency_text,
    measured_cell,
    measured_on,
    off_target,
    off_target_devices,
    sig,
)
from kdc.deploy.report_html import render_html
from kdc.deploy.report_md import latency_model, render_markdown, timed_on_device
from kdc.deploy.report_plot import render_png
from kdc.rundir import atomic_path, write_json, write_text

__all__ = ["console_summary", "render_markdown", "write_report"]


def write_report(report: dict, run_dir: Path | str) -> list[Path]:
    """Write report.md, report.png, report.html and, last, report.json (each atomically);
    return them as [json, md, png, html]."""
    run_dir = Path(run_dir)
    png = render_png(report)
    md = write_text(run_dir / "report.md", render_markdown(report))
    with atomic_path(run_dir / "report.png") as tmp:
        tmp.write_bytes(png)
    html = write_text(run_dir / "report.html", render_html(report, png))
    return [write_json(run_dir / "report.json", report), md, run_dir / "report.png", html]


def _accuracy_cell(part: dict, task: str | None) -> str:
    """The headline accuracy, marked when a stand-in's (`*`), then that of this CPU's int8
    kernels when they are what the measured latency timed (report.md's `accuracy_this_cpu`)."""
    text = accuracy_text(part.get("accuracy"), task)
    if stand_in(part.get("accuracy")) and text != DASH:
        text += " *"
    _, cpu = accuracy_value(part.get("accuracy_this_cpu"), task)
    return text if cpu is None else f"{text}; {cpu:.4f} on this CPU's int8 kernels (timed here)"


def _row(table: Table, name: str, part: dict, report: dict, elsewhere: bool) -> None:
    table.add_row(
        Text(name),  # plain text: "[built]" as markup would be read as a style tag and vanish
        _accuracy_cell(part, report.get("task")),
        measured_cell(report, by_kind(part, "measured"), elsewhere),
        latency_text(by_kind(part, "predicted")),
        sig(part.get("size_mb")),
    )


BY_DEVICE = ", or by trtexec on the device (marked 'on the target')"
LEGEND = (
    "measured: timed by kdc{device} (p50 / p99 over the stated iterations); predicted: the "
    "latency model's p50, never timed. report.md gives every figure's conditions."
)


ACCURACY_LEGEND = (
    "accuracy: on the eval split, by the row's own engine run on this CPU (the teacher's: "
    "{teacher}); report.md names each"
)


def _engine_of(part: dict | None) -> str:
    return ((part or {}).get("accuracy") or {}).get("engine") or "its exported graph"


STAND_INS = {  # constraints.stand_in → what the accuracy marked * was run on
    "qdq-in-float": "the INT8 graph run with Q/DQ in float (the arithmetic the target's engine "
    "approximates)",
    "fp32-graph": "the FP32 graph run by ONNX Runtime on this CPU (the target's engine runs it in "
    "FP16)",
}


def _constraint_line(c: dict) -> Text:
    ok = bool(c.get("pass"))
    mark = Text("PASS " if ok else "FAIL ", style="bold green" if ok else "bold red")
    if c.get("value") is None:
        detail = (
            f"{constraint_name(c)}: no value ({c.get('reason', 'unknown')}), limit {c['limit']:g}"
        )
    else:
        detail = (
            f"{constraint_name(c)} {c['value']:g} "
            f"(limit {c['limit']:g}, {value_and_engine(c)})"
            + (f": {c['reason']}" if not ok and c.get("reason") else "")
        )
    return mark + Text(detail)


CONSTRAINTS_HINT = (
    "no constraints set: add constraints.max_accuracy_drop, latency_budget_ms, max_memory_mb "
    "or max_size_mb to the config for a verdict that gates"
)


def console_summary(report: dict, *, brief: bool = False) -> Group:
    """A compact terminal view: teacher and engines, then one line per constraint and the
    verdict. `brief` (-q) keeps only the engines' warnings, the constraint lines and the verdict,
    so a quiet CI log still says what failed."""
    run, target = report.get("run") or {}, report.get("target") or {}
    table = Table(
        title=f"{run.get('name', 'run')} on {target.get('name', '?')}", title_justify="left"
    )
    parts = [("teacher", report.get("teacher") or {})]
    parts += [(f"{engine_label(e)} [{engine_status(e)}]", e) for e in report.get("engines") or []]
    measured = [by_kind(part, "measured") for _, part in parts]
    hosts = off_target_devices(report, measured)
    on_device = bool(hosts) and any(m and not off_target(report, m) for m in measured)
    predicted = [by_kind(part, "predicted") for _, part in parts]
    heads = [
        "model",
        "accuracy",
        "latency measured"
        + measured_on(hosts)
        + heading_conditions(measured, hosts)
        + (" or on the target where marked" * on_device),
    ]
    model = f" ({latency_model(report)})" if any(predicted) else ""
    heads += ["latency predicted" + model + heading_conditions(predicted, []), "size MB"]
    for col in heads:
        table.add_column(col, justify="left" if col in ("model", "accuracy") else "right")
    for name, part in parts:
        _row(table, name, part, report, bool(hosts))
    legend = [
        Text(LEGEND.format(device=BY_DEVICE * on_device), style="dim"),
        Text(ACCURACY_LEGEND.format(teacher=_engine_of(report.get("teacher"))), style="dim"),
    ]
    kinds = dict.fromkeys(stand_in(part.get("accuracy")) for _, part in parts)
    legend += [
        Text(f"* stand-in: {STAND_INS.get(kind, kind)}, not the engine itself", style="dim")
        for kind in kinds
        if kind
    ]
    lines = [
        Text(f"{engine_label(e)} is {e.get('status')}: {e['reason']}", style="yellow")
        for e in report.get("engines") or []
        if e.get("status") != "built" and e.get("reason") and not brief and not timed_on_device(e)
    ]  # why an engine was not built here (bundle, or unavailable on this target)
    lines += [
        Text(f"{engine_label(e)}: {w}", style="yellow")
        for e in report.get("engines") or []
        for w in e.get("warnings") or []
    ]  # verify's findings about an engine (INT8 no faster than FP32, int8 kernels losing)
    lines += [_constraint_line(c) for c in report.get("constraints") or []]
    lines += [Text(why, style="yellow") for why in ungated(report)]
    style = {True: "bold green", False: "bold red"}.get(report.get("passed"), "yellow")
    if checked_nothing(report):
        lines.append(Text(CONSTRAINTS_HINT, style="yellow"))
        style = "bold yellow"
    shown = [] if brief else [table, *legend]
    return Group(*shown, *lines, Text(verdict(report), style=style))
