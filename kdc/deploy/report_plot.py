"""report.png: latency (x) against accuracy (y) for the teacher, the search and every engine.

Search candidates scored only by a proxy get their own panel below, sharing the latency axis:
a proxy score is not an accuracy and is never drawn on the accuracy scale.
"""

from __future__ import annotations

import io
import math

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox, blended_transform_factory

from kdc.deploy.constraints import (
    accuracy_value,
    engine_label,
    headline_latency,
    latencies,
    stand_in,
)
from kdc.deploy.report_cells import measured_on, off_target_devices

SIZE_IN, DPI = (12, 8), 100  # 1200 × 800 px
LOG_SPAN = 20  # log x axis when the largest latency is this many times the smallest
STRIP_Y = 0.04  # axes-fraction height of engines that have no accuracy
NEAR_PX = 4  # points this close (pixels) share one label
LINE_PT, MAX_SHIFT = 12, 6  # a label overlapping another moves up to MAX_SHIFT lines down or up
MARKER_PX = 24  # the box a point's marker covers, which other points' labels avoid
GAP_PX = 6  # the least room between two labels, so two never read as one
LABEL_STYLE = {"textcoords": "offset points", "fontsize": 9}


def _search_rows(report: dict) -> tuple[list[dict], list[dict], str | None]:
    """(candidates, Pareto front sorted by latency, y key: "proxy", or None where a row has no
    proxy score). The search records no accuracy: its rows are drawn on a proxy panel."""
    search = report.get("search") or {}
    cands = [r for r in search.get("candidates") or [] if r.get("predicted_latency_ms")]
    front = sorted(
        (r for r in search.get("pareto") or [] if r.get("predicted_latency_ms")),
        key=lambda r: r["predicted_latency_ms"],
    )
    rows = cands + front
    if rows and all(r.get("proxy") is not None for r in rows):
        return cands, front, "proxy"
    return [], [], None


def _plot_search(
    ax: Axes, report: dict, cands: list, front: list, key: str
) -> tuple[list[float], bool]:
    """Candidates, the Pareto front and the chosen student; returns their latencies and
    whether the chosen student was among them (and marked)."""
    x = "predicted_latency_ms"
    ax.scatter(
        [r[x] for r in cands],
        [r[key] for r in cands],
        s=24,
        color="0.6",
        alpha=0.8,
        label=f"search candidates ({key}; predicted latency)",
    )
    ax.plot(
        [r[x] for r in front],
        [r[key] for r in front],
        "-",
        color="tab:blue",
        marker=".",
        label=f"Pareto front ({key})",
    )
    arch = (report.get("student") or {}).get("architecture")
    chosen = next(
        (r for r in front + cands if r.get("chosen") or r.get("architecture") == arch), None
    )
    if chosen:
        _ring(ax, chosen[x], chosen[key], "chosen student")
    return [r[x] for r in cands + front], chosen is not None


def _ring(ax: Axes, x: float, y: float, label: str | None, **kw) -> None:
    """The chosen student's mark: a large red ring around its point."""
    style = {"s": 280, "facecolors": "none", "edgecolors": "tab:red", "linewidths": 2.5}
    ax.scatter([x], [y], **style, label=label, zorder=5, **kw)


def _style(kind: str, color: str, marker: str, size: int, label: str | None) -> dict:
    """Filled markers for measured latency, hollow for predicted."""
    style = {"marker": marker, "s": size, "zorder": 6, "linewidths": 1.8, "label": label}
    if kind == "predicted":
        return {**style, "facecolors": "none", "edgecolors": color}
    return {**style, "color": color, "edgecolors": "black"}


def _paired_accuracy(part: dict, key: str) -> dict | None:
    """The accuracy of the engine a latency object timed: an INT8 engine judged by its Q/DQ
    stand-in keeps this CPU's own int8 figure (`accuracy_this_cpu`) for the latency timed
    here (`latency`)."""
    own = part.get("accuracy_this_cpu") if key == "latency" else None
    return own or part.get("accuracy")


def _timed_as(lat: dict) -> str:
    """A measured latency's engine, precision, batch and threads (where its device does not
    name them): `onnxruntime fp32, batch 1, 2 threads`."""
    threads = lat.get("threads")
    named = threads is None or "thread" in str(lat.get("device", ""))
    return f"{lat.get('engine', '?')} {lat.get('precision', '?')}, batch {lat.get('batch', 1)}" + (
        "" if named else f", {threads} threads"
    )


def _plot_models(
    ax: Axes, report: dict, ring_shipped: bool = False
) -> tuple[list[float], list[tuple[float, float, str]]]:
    """The teacher (stars) and engines (circles; diamonds for a latency the target device timed),
    one point per latency object; engines with no accuracy sit on a labelled strip at the
    bottom. With `ring_shipped`, the engine that ships is ringed as the chosen student. Returns
    the latencies drawn and the (x, y, name) labels still to place (see `_place_labels`)."""
    task = report.get("task")
    strip = blended_transform_factory(ax.transData, ax.transAxes)
    parts = [("teacher", report.get("teacher") or {}, "*", 420, "goldenrod")]
    parts += [(engine_label(e), e, "o", 130, "tab:green") for e in report.get("engines") or []]
    seen: set[str] = set()
    xs, stripped, labels, strip_labels = [], 0, [], []
    ringed = "chosen student (the engine that ships)"  # legend text, on the first ring only
    for name, part, marker, size, color in parts:
        ring = ring_shipped and name != "teacher" and part.get("ships")
        for key, lat in latencies(part):
            x, stat = headline_latency(lat)
            if x is None:
                continue
            paired = _paired_accuracy(part, key)
            acc = accuracy_value(paired, task)[1]
            kind = lat.get("kind", "?")
            group = "teacher" if name == "teacher" else "engine"
            core = f", DLA core {lat['dla_core']}" if lat.get("dla_core") is not None else ""
            legend = f"{group}, {kind} latency ({stat}, {lat.get('model', '?')}{core})"
            if kind == "measured":
                hosts = off_target_devices(report, [lat])
                where = measured_on(hosts) or f" on {lat.get('device', '?')}"
                legend = f"{group}, latency ({stat})\nmeasured{where}\n{_timed_as(lat)}"
            shape = "D" if lat.get("on_target") else marker  # timed on the device itself
            style = _style(kind, color, shape, size, None if legend in seen else legend)
            seen.add(legend)
            text = name + (" (predicted for target)" if key == "target_latency" else "")
            if acc is not None and (paired is not part.get("accuracy") or stand_in(paired)):
                text += f"\n(accuracy of {paired.get('engine', '?')}"
                text += ", a stand-in)" if stand_in(paired) else ")"
            if acc is None:
                ax.scatter([x], [STRIP_Y], transform=strip, **style)
                ax.update_datalim([(x, 0.0)], updatey=False)  # a strip point widens the x axis
                status = part.get("status") or ("not evaluated" if name == "teacher" else "?")
                strip_labels.append((x, f"{text}: no accuracy ({status})", stripped))
                stripped += 1
                if ring:
                    _ring(ax, x, STRIP_Y, ringed, transform=strip)
            else:
                ax.scatter([x], [acc], **style)
                labels.append((x, acc, text))
                if ring:
                    _ring(ax, x, acc, ringed)
            if ring:
                ringed = None
            xs.append(x)
    if stripped:
        band = Rectangle((0, 0), 1, 2 * STRIP_Y, transform=ax.transAxes, color="0.92", zorder=0)
        ax.add_patch(band)
    return xs, labels, strip_labels


def _annotate_strip(ax: Axes, strip_labels: list[tuple[float, str, int]]) -> None:
    """Label the no-accuracy strip's points once the x axis is final: text to the right of a
    point in the left half, to its left in the right half, so that it stays inside the axes."""
    strip = blended_transform_factory(ax.transData, ax.transAxes)
    to_axes = ax.transAxes.inverted()
    for x, text, i in strip_labels:
        right_half = to_axes.transform(strip.transform((x, STRIP_Y)))[0] > 0.5
        ax.annotate(
            text,
            (x, STRIP_Y),
            xycoords=strip,
            xytext=(-8 if right_half else 8, 4 + 13 * i),
            textcoords="offset points",
            ha="right" if right_half else "left",
            fontsize=9,
        )


def _place_labels(fig: Figure, ax: Axes, labels: list[tuple[float, float, str]]) -> None:
    """Name the points beside them, legibly when several nearly coincide: points within NEAR_PX
    of each other share one label listing their names, and a label that would come within
    GAP_PX of another label or overlap a point moves a line down or up, or to the point's
    left; one not right beside its point (right, same line) has a thin leader to it."""
    if not labels:
        return
    fig.canvas.draw()  # lay out: limits, scale and axes position, then keep them so the
    fig.set_layout_engine("none")  # pixel positions below are the ones saved
    renderer = fig.canvas.get_renderer()
    groups: list[tuple[tuple[float, float], tuple[float, float], list[str]]] = []
    for x, y, text in labels:
        px, py = ax.transData.transform((x, y))
        for (gx, gy), _, names in groups:
            if abs(gx - px) <= NEAR_PX and abs(gy - py) <= NEAR_PX:
                names.append(text)
                break
        else:
            groups.append(((px, py), (x, y), [text]))
    half = MARKER_PX / 2
    points = [Bbox([[px - half, py - half], [px + half, py + half]]) for (px, py), *_ in groups]
    placed: list[Bbox] = []
    # right of the point, else left of it, on the first line that is free (and inside the axes)
    spots = [
        (side, line)
        for k in range(MAX_SHIFT + 1)
        for line in dict.fromkeys((-k, k))
        for side in (1, -1)
    ]
    for (px, py), xy, names in sorted(groups, key=lambda g: (-g[0][1], g[0][0])):
        text = ", ".join(dict.fromkeys(names))
        others = placed + [b for b in points if not b.contains(px, py)]
        for side, line in [*spots, (1, 0)]:  # (1, 0) when nothing is free
            style = {
                **LABEL_STYLE,
                "xytext": (8 * side, 6 + LINE_PT * line),
                "ha": "left" if side > 0 else "right",
            }
            probe = ax.annotate(text, xy, **style)
            box = probe.get_window_extent(renderer)  # no arrow yet: the text's box
            probe.remove()
            inside = ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1
            if inside and not any(box.overlaps(b) for b in others):
                break
        beside = (side, line) == (1, 0)
        leader = None if beside else {"arrowstyle": "-", "color": "0.5", "lw": 0.6}
        ax.annotate(text, xy, arrowprops=leader, **style)
        placed.append(box.padded(GAP_PX))


def _budget(axes: list[Axes], report: dict) -> list[float]:
    """The target's latency budget; when some points were timed on another machine, its legend
    says it applies to the target's latencies only."""
    rows = [c for c in report.get("constraints") or [] if c.get("name") == "latency_p99_ms"]
    if not rows:
        return []
    limit = rows[0]["limit"]
    parts = [report.get("teacher") or {}, *(report.get("engines") or [])]
    lats = [lat for part in parts for _, lat in latencies(part)]
    target = (report.get("target") or {}).get("name", "the target")
    label = f"latency budget {limit:g} ms on {target}"
    if off_target_devices(report, lats):
        label += "\n(for target latencies, not those\nmeasured on another machine)"
    for i, ax in enumerate(axes):
        ax.axvline(
            limit,
            color="tab:red",
            linestyle="--",
            linewidth=2,
            label=None if i else label,
        )
    return [limit]


def _no_ticks_past_one(ax: Axes) -> None:
    """Every metric plotted is at most 1: the margin kept above it for labels has no ticks."""
    lo, hi = ax.get_ylim()
    if hi > 1.0:
        ax.set_yticks([t for t in ax.get_yticks() if lo <= t <= 1.0 + 1e-9])
        ax.set_ylim(lo, hi)


def render_png(report: dict) -> bytes:
    """The latency/accuracy plot as PNG bytes (1200 × 800 px)."""
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    cands, front, key = _search_rows(report)
    if key:
        ax, proxy_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        proxy_ax.set_ylabel(f"search proxy ({(report.get('search') or {}).get('proxy', '?')})")
        axes = [ax, proxy_ax]
    else:
        ax = fig.add_subplot()
        axes = [ax]
    xs, chosen_drawn = _plot_search(axes[-1], report, cands, front, key) if key else ([], False)
    # no search point to mark (a fixed student, or rows without predicted latency): the chosen
    # student is then shown by the engine that ships it
    model_xs, labels, strip_labels = _plot_models(ax, report, ring_shipped=not chosen_drawn)
    xs += model_xs + _budget(axes, report)
    task = report.get("task")
    metric = accuracy_value((report.get("teacher") or {}).get("accuracy"), task)[0] or "accuracy"
    run, target = (report.get("run") or {}).get("name", "run"), report.get("target") or {}
    ax.set_title(f"{run} on {target.get('name', '?')}\nlatency vs {metric}", fontsize=15)
    ax.set_ylabel(f"{metric} on held-out data", fontsize=12)
    ax.margins(y=0.35)  # room for the no-accuracy strip
    parts = [report.get("teacher") or {}, *(report.get("engines") or [])]
    kinds = {lat.get("kind") for part in parts for _, lat in latencies(part)}
    kinds |= {"predicted"} if cands else set()
    stats = "; ".join(
        f"{k}: {s}" for k, s in (("measured", "p99"), ("predicted", "p50")) if k in kinds
    )
    axes[-1].set_xlabel(f"latency, ms ({stats})" if stats else "latency, ms", fontsize=12)
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > LOG_SPAN:
        ax.set_xscale("log")
        decades = math.log10(max(positive) / min(positive))
        subs = (1, 2, 3, 5) if decades < 2 else (1, 2, 5) if decades < 4 else (1,)
        ax.xaxis.set_major_locator(LogLocator(subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # a short span labels minor ticks
    if not xs:
        ax.text(0.5, 0.5, "no latency figures to plot", ha="center", transform=ax.transAxes)
    if not labels and not cands:  # no accuracy anywhere (a search that found no student)
        ax.set_yticks([])
    handles, legend = [], []
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
        h, lab = a.get_legend_handles_labels()
        handles, legend = handles + h, legend + lab
    if handles:
        fig.legend(handles, legend, loc="outside right upper", fontsize=10)
    _no_ticks_past_one(ax)
    _annotate_strip(ax, strip_labels)
    _place_labels(fig, ax, labels)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
