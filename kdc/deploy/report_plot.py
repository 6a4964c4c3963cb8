"""report.png: latency (x) against accuracy (y) for the teacher, the search and every engine.

Search candidates scored only by a proxy get their own panel below, sharing the latency axis:
a proxy score is not an accuracy and is never drawn on the accuracy scale.
"""

from __future__ import annotations

import io

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator
from matplotlib.transforms import blended_transform_factory

from kdc.deploy.constraints import accuracy_value, engine_label, headline_latency, latencies

SIZE_IN, DPI = (12, 8), 100  # 1200 × 800 px
LOG_SPAN = 20  # log x axis when the largest latency is this many times the smallest
STRIP_Y = 0.04  # axes-fraction height of engines that have no accuracy


def _search_rows(report: dict) -> tuple[list[dict], list[dict], str | None]:
    """(candidates, Pareto front sorted by latency, y key: "accuracy", "proxy" or None)."""
    search = report.get("search") or {}
    cands = [r for r in search.get("candidates") or [] if r.get("predicted_latency_ms")]
    front = sorted(
        (r for r in search.get("pareto") or [] if r.get("predicted_latency_ms")),
        key=lambda r: r["predicted_latency_ms"],
    )
    rows = cands + front
    for key in ("accuracy", "proxy"):
        if rows and all(r.get(key) is not None for r in rows):
            return cands, front, key
    return [], [], None


def _plot_search(ax: Axes, report: dict, cands: list, front: list, key: str) -> list[float]:
    """Candidates, the Pareto front and the chosen student; returns their latencies."""
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
        ax.scatter(
            [chosen[x]],
            [chosen[key]],
            s=280,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2.5,
            label="chosen student",
            zorder=5,
        )
    return [r[x] for r in cands + front]


def _style(kind: str, color: str, marker: str, size: int, label: str | None) -> dict:
    """Filled markers for measured latency, hollow for predicted."""
    style = {"marker": marker, "s": size, "zorder": 6, "linewidths": 1.8, "label": label}
    if kind == "predicted":
        return {**style, "facecolors": "none", "edgecolors": color}
    return {**style, "color": color, "edgecolors": "black"}


def _plot_models(ax: Axes, report: dict) -> list[float]:
    """The teacher (stars) and engines (circles), one point per latency object; engines with
    no accuracy sit on a labelled strip at the bottom. Returns the latencies drawn."""
    task = report.get("task")
    strip = blended_transform_factory(ax.transData, ax.transAxes)
    parts = [("teacher", report.get("teacher") or {}, "*", 420, "goldenrod")]
    parts += [(engine_label(e), e, "o", 130, "tab:green") for e in report.get("engines") or []]
    seen: set[tuple[str, str]] = set()
    xs, stripped = [], 0
    for name, part, marker, size, color in parts:
        acc = accuracy_value(part.get("accuracy"), task)[1]
        for key, lat in latencies(part):
            x, stat = headline_latency(lat)
            if x is None:
                continue
            kind = lat.get("kind", "?")
            group = "teacher" if name == "teacher" else "engine"
            legend = None if (group, kind) in seen else f"{group}, {kind} latency ({stat})"
            seen.add((group, kind))
            style = _style(kind, color, marker, size, legend)
            text = name + (" (predicted for target)" if key == "target_latency" else "")
            if acc is None:
                ax.scatter([x], [STRIP_Y], transform=strip, **style)
                ax.annotate(
                    f"{text}: no accuracy ({part.get('status', '?')})",
                    (x, STRIP_Y),
                    xycoords=strip,
                    xytext=(8, 4 + 13 * stripped),
                    textcoords="offset points",
                    fontsize=9,
                )
                stripped += 1
            else:
                ax.scatter([x], [acc], **style)
                ax.annotate(text, (x, acc), xytext=(8, 6), textcoords="offset points", fontsize=9)
            xs.append(x)
    if stripped:
        band = Rectangle((0, 0), 1, 2 * STRIP_Y, transform=ax.transAxes, color="0.92", zorder=0)
        ax.add_patch(band)
    return xs


def _budget(axes: list[Axes], report: dict) -> list[float]:
    rows = [c for c in report.get("constraints") or [] if c.get("name") == "latency_p99_ms"]
    if not rows:
        return []
    limit = rows[0]["limit"]
    for i, ax in enumerate(axes):
        ax.axvline(
            limit,
            color="tab:red",
            linestyle="--",
            linewidth=2,
            label=None if i else f"latency budget {limit:g} ms",
        )
    return [limit]


def render_png(report: dict) -> bytes:
    """The latency/accuracy plot as PNG bytes (1200 × 800 px)."""
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    cands, front, key = _search_rows(report)
    if key == "proxy":
        ax, proxy_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        proxy_ax.set_ylabel(f"search proxy ({(report.get('search') or {}).get('proxy', '?')})")
        axes = [ax, proxy_ax]
    else:
        ax = fig.add_subplot()
        axes = [ax]
    xs = _plot_search(axes[-1], report, cands, front, key) if key else []
    xs += _plot_models(ax, report) + _budget(axes, report)
    task = report.get("task")
    metric = accuracy_value((report.get("teacher") or {}).get("accuracy"), task)[0] or "accuracy"
    run, target = (report.get("run") or {}).get("name", "run"), report.get("target") or {}
    ax.set_title(f"{run} on {target.get('name', '?')}: latency vs {metric}", fontsize=15)
    ax.set_ylabel(f"{metric} on held-out data", fontsize=12)
    ax.margins(y=0.35)  # room for the no-accuracy strip
    axes[-1].set_xlabel("latency, ms (measured: p99; predicted: p50)", fontsize=12)
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > LOG_SPAN:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if not xs:
        ax.text(0.5, 0.5, "no latency figures to plot", ha="center", transform=ax.transAxes)
    handles, labels = [], []
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
        h, lab = a.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
