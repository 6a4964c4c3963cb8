"""How well the calibrated latency model ranks and predicts models it was not fitted to (not a
test).

    python bench/latency_model.py [--iterations 10 --rounds 3 --min-duration 0.2 --cache DIR]

Generates the model set of `kdc.deploy.model_zoo` (cached in --cache): a calibration subset and a
disjoint evaluation subset (BERT encoders, layers 1-12, hidden 128-768, seq 128, and SmallCNNs,
each FP32 and INT8, batch 1). Times both on this machine with ONNX Runtime, fits the host
profile's latency model to the calibration timings only (as `kdc calibrate` does), predicts every
evaluation model from its ONNX graph and from its architecture dict, and writes Kendall tau,
Spearman rho, MAPE and the share within +-10 % to bench/results/latency_model.json with a
scatter plot latency_model.png. No user calibration file is read or written.

Timing: 1 intra-op thread, 3 warm-up runs, then 10 iterations and at least 0.2 s per model, in 3
interleaved rounds; per model the lowest per-round p50. Two clocks: the timing thread's CPU time
(top-level figures; immune to other processes on a shared machine) and the wall clock of kdc's
protocol (`wall_clock`), each with its own fit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_CONFIG = tempfile.TemporaryDirectory(prefix="kdc-bench-config-")
os.environ["KDC_CONFIG_DIR"] = _CONFIG.name  # no user calibration is read

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from kdc.deploy import model_zoo  # noqa: E402
from kdc.deploy.calibrate import fit_rows, load_average, time_models  # noqa: E402
from kdc.deploy.estimate import predict_architecture, predict_onnx  # noqa: E402
from kdc.profiles import LatencyModel, cpu_info, load_profile  # noqa: E402
from kdc.rundir import now_iso, write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def scores(measured: np.ndarray, predicted: np.ndarray) -> dict:
    """Rank agreement and relative error of predictions against measurements."""
    from scipy.stats import kendalltau, spearmanr

    rel = predicted / measured - 1.0
    return {
        "kendall_tau": round(float(kendalltau(measured, predicted).statistic), 4),
        "spearman_rho": round(float(spearmanr(measured, predicted).statistic), 4),
        "mape": round(float(np.mean(np.abs(rel))), 4),
        "within_10pct": round(float(np.mean(np.abs(rel) <= 0.10)), 4),
        "median_signed_error": round(float(np.median(rel)), 4),
    }


def evaluate(cache: Path, cal: list[dict], evals: list[dict], host, clock: str) -> dict:
    """Fit the host latency model to the calibration timings of `clock` (measured_ms or
    cpu_ms), predict every evaluation model from its graph and its architecture dict."""
    lm, fitted, _ = fit_rows(cache, cal, host, clock)
    prof = host.model_copy(update={"latency_model": LatencyModel.model_validate(lm)})
    rows = []
    for r in evals:
        kw = {"precision": r["precision"], "batch": r["batch"], "input_shapes": r["input_shapes"]}
        arch = r["family"] in ("transformer", "cnn")
        rows.append(
            {
                "name": r["name"],
                "family": r["family"],
                "precision": r["precision"],
                "measured_ms": round(r[clock], 4),
                "predicted_ms": predict_onnx(cache / r["file"], prof, **kw)["p50_ms"],
                "arch_predicted_ms": predict_architecture(r["arch"], prof, **kw)["p50_ms"]
                if arch
                else None,
            }
        )
    m = np.array([r["measured_ms"] for r in rows])
    a = [r for r in rows if r["arch_predicted_ms"] is not None]
    cal_err = [abs(r["predicted_ms"] / r[clock] - 1) for r in fitted]
    return {
        "n_models": len(rows),
        **scores(m, np.array([r["predicted_ms"] for r in rows])),
        "architecture_path": scores(
            np.array([r["measured_ms"] for r in a]), np.array([r["arch_predicted_ms"] for r in a])
        ),
        "groups": groups(rows),
        "latency_model": lm,
        "calibration": {
            "n_models": len(fitted),
            "median_abs_error": round(float(np.median(cal_err)), 4),
            "models": [
                {
                    "name": r["name"],
                    "measured_ms": round(r[clock], 4),
                    "predicted_ms": r["predicted_ms"],
                }
                for r in fitted
            ],
        },
        "models": rows,
    }


def groups(rows: list[dict]) -> list[dict]:
    keys = sorted({(r["family"], r["precision"]) for r in rows})
    out = []
    for fam, prec in keys:
        sel = [r for r in rows if r["family"] == fam and r["precision"] == prec]
        m = np.array([r["measured_ms"] for r in sel])
        p = np.array([r["predicted_ms"] for r in sel])
        out.append({"family": fam, "precision": prec, "n": len(sel), **scores(m, p)})
    return out


def plot(panels: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.6), squeeze=False)
    markers = {"transformer": "o", "cnn": "s", "mlp": "^"}
    colors = {"fp32": "tab:blue", "int8": "tab:orange", "fp16": "tab:green"}
    for ax, (title, res) in zip(axes[0], panels.items(), strict=True):
        rows = res["models"]
        for fam, prec in sorted({(r["family"], r["precision"]) for r in rows}):
            sel = [r for r in rows if r["family"] == fam and r["precision"] == prec]
            ax.scatter(
                [r["measured_ms"] for r in sel],
                [r["predicted_ms"] for r in sel],
                marker=markers.get(fam, "x"),
                color=colors.get(prec, "gray"),
                label=f"{fam} {prec}",
                alpha=0.8,
            )
        lo = min(min(r["measured_ms"], r["predicted_ms"]) for r in rows) * 0.8
        hi = max(max(r["measured_ms"], r["predicted_ms"]) for r in rows) * 1.2
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="gray", alpha=0.15, label="±10 %")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
        ax.set(xlabel="measured (ms)", ylabel="predicted (ms)")
        ax.set_title(
            f"{title}: τ {res['kendall_tau']:.2f}, {res['within_10pct']:.0%} within ±10 %",
            fontsize=10,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def table(res: dict, title: str) -> Table:
    t = Table(title=title)
    for col in ("model", "prec", "measured ms", "predicted ms", "arch ms", "error"):
        t.add_column(col, justify="left" if col in ("model", "prec") else "right")
    for r in sorted(res["models"], key=lambda r: r["measured_ms"]):
        a = r["arch_predicted_ms"]
        t.add_row(
            r["name"],
            r["precision"],
            f"{r['measured_ms']:.3f}",
            f"{r['predicted_ms']:.3f}",
            f"{a:.3f}" if a else "-",
            f"{r['predicted_ms'] / r['measured_ms'] - 1:+.0%}",
        )
    return t


def summary(name: str, res: dict) -> str:
    a = res["architecture_path"]
    lines = [
        f"{name}: n={res['n_models']} tau {res['kendall_tau']:.3f} rho {res['spearman_rho']:.3f} "
        f"MAPE {res['mape']:.1%} within±10% {res['within_10pct']:.0%} (architecture path: "
        f"tau {a['kendall_tau']:.3f}, within±10% {a['within_10pct']:.0%})"
    ]
    for g in res["groups"]:
        lines.append(
            f"  {g['family']:12} {g['precision']:5} n={g['n']:2} tau {g['kendall_tau']:.3f} "
            f"MAPE {g['mape']:.1%} within±10% {g['within_10pct']:.0%} "
            f"median error {g['median_signed_error']:+.1%}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kdc-zoo")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--min-duration", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    sets = {
        "calibration": model_zoo.calibration_set(paddings=model_zoo.HOST_PADDINGS),
        "evaluation": model_zoo.evaluation_set(),
    }
    rows = {}
    for name, zoo in sets.items():
        made = model_zoo.generate(
            zoo, args.cache / name, progress=lambda n: console.print(f"export {n}")
        )
        rows[name] = [{**r, "set": name, "file": f"{name}/{r['file']}"} for r in made]
    t_export = time.perf_counter() - t0
    loads = [load_average()]
    protocol = {
        "threads": 1,
        "warmup": 3,
        "iterations": args.iterations,
        "min_duration_s": args.min_duration,
    }
    timed = time_models(
        args.cache,
        [*rows["calibration"], *rows["evaluation"]],
        rounds=args.rounds,
        **protocol,
    )
    loads.append(load_average())
    t_timing = time.perf_counter() - t0 - t_export
    cal = [r for r in timed if r["set"] == "calibration"]
    evals = [r for r in timed if r["set"] == "evaluation"]
    host = load_profile("host")
    cpu = evaluate(args.cache, cal, evals, host, "cpu_ms")
    wall = evaluate(args.cache, cal, evals, host, "measured_ms")
    result = {
        **{k: v for k, v in cpu.items() if k != "models"},
        "measurement": "p50 of the timing thread's CPU time (ONNX Runtime computes on the "
        "calling thread with 1 intra-op thread), lowest over rounds: on this shared machine "
        "the wall clock also counts the time the OS gives other processes (see wall_clock)",
        "wall_clock": {k: v for k, v in wall.items() if k != "models"},
        "protocol": {
            **protocol,
            "rounds": args.rounds,
            "engine": "onnxruntime",
            "calibration": "host profile fitted (per-kind) to the calibration subset, "
            "once per clock; no architecture is shared with the evaluation subset",
        },
        "machine": {
            "cpu": cpu_info()[0],
            "cores": os.cpu_count(),
            "load_average_1min_before_after_timing": loads,
        },
        "wall_s": {
            "export": round(t_export, 1),
            "timing": round(t_timing, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "created": now_iso(),
        "models": [
            {**c, "wall_ms": w["measured_ms"], "wall_predicted_ms": w["predicted_ms"]}
            for c, w in zip(cpu["models"], wall["models"], strict=True)
        ],
    }
    write_json(RESULTS / "latency_model.json", result)
    plot({"thread CPU time": cpu, "wall-clock p50": wall}, RESULTS / "latency_model.png")
    console.print(table(cpu, f"unseen models, thread CPU time ({cpu_info()[0]}, 1 thread)"))
    console.print(summary("thread CPU time", cpu))
    console.print(summary("wall-clock p50", wall))
    console.print(
        f"load average {loads}; export {t_export:.0f} s, timing {t_timing:.0f} s, "
        f"total {result['wall_s']['total']:.0f} s"
    )


if __name__ == "__main__":
    main()
