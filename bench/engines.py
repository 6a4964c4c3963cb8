"""ONNX Runtime engines of a finished run: the fused INT8 engine kdc ships against the unfused FP32
student (issue #6; goal: >= 3x lower p50 latency on this CPU).

    python bench/engines.py [--run runs/sentiment-host] [--threads 1,2] [--iterations 300]

Variants, all run by ONNX Runtime's CPU provider at batch 1 on the first eval row (text: padded
to data.max_length, as kdc encodes every split):
  fp32_unfused  export/model.onnx, graph optimisations off (ORT_DISABLE_ALL)
  fp32_fused    build/onnxruntime/model_fp32.onnx (transformer fusion), ORT_ENABLE_ALL
  int8_fused    build/onnxruntime/model_int8.onnx (static QDQ, the engine kdc ships), ORT_ENABLE_ALL
  int8_dynamic  dynamic INT8 of the fused FP32 graph (weights int8, activations at run time),
                written to a scratch directory, ORT_ENABLE_ALL
Accuracy of each is computed on the eval split with kdc's verify code (kdc.stages.verify.evaluate,
the same encoder and metrics as `kdc verify`), with agreement against the teacher's ONNX. Latency is
timed with kdc.deploy.latency.measure_callable; variants are timed round-robin, `--rounds` times,
and the lowest p50 of the rounds is kept (the machine is shared). Writes bench/results/engines.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from kdc.api import config_of_run, open_run  # noqa: E402
from kdc.deploy.latency import measure_callable  # noqa: E402
from kdc.deploy.onnxruntime import (  # noqa: E402
    CPU,
    OPTIMIZATION_LEVELS,
    count_ops,
    feed_for,
    make_session,
    quantize_dynamic_int8,
    session_options_record,
)
from kdc.profiles import cpu_info  # noqa: E402
from kdc.rundir import write_json  # noqa: E402
from kdc.stages.verify import evaluate, predict  # noqa: E402

OUT = ROOT / "bench" / "results" / "engines.json"
GOAL = 3.0
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# Ops that show ORT fused or quantized something (counted in the graph ORT actually runs).
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "QAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "FusedMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearMatMul",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
)
# fp32 flops per cycle and core: 2 FMA pipes x lanes x 2 flops (AVX2: 8 lanes, Zen 2/3 and
# Haswell+; AVX-512: 16 lanes, server Xeons with two 512-bit FMA units)
FP32_FLOPS_PER_CYCLE = {"AVX-512": 64, "AVX2": 32}


def cpu_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        return None
    return None


def runtime_ops(path: Path, optimization: str, scratch: Path) -> dict | str:
    """Op counts of the graph ONNX Runtime runs after its own optimisations (saved by ORT)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    dst = scratch / f"runtime-{path.stem}-{optimization}.onnx"
    opts.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(path), opts, providers=[CPU])
        ops = count_ops(dst)
    except Exception as e:  # some optimised graphs cannot be serialised; recorded, not fatal
        return f"not saved: {type(e).__name__}"
    return {k: ops[k] for k in FUSED_OPS if k in ops}


def cpu_flags() -> dict:
    """The int8-relevant instruction-set flags of this CPU (`kdc.profiles.cpu_info`)."""
    flags = cpu_info()[1]
    if not flags:
        return {"source": "unavailable"}
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", *VNNI_FLAGS)
    return {
        "source": "/proc/cpuinfo",
        **{f: f in flags for f in wanted},
        "vnni": any(f in flags for f in VNNI_FLAGS),
    }


def variants(run: Path, scratch: Path) -> dict[str, dict]:
    """name -> {path, optimization, precision, what} for every variant that exists."""
    ort_dir = run / "build" / "onnxruntime"
    out = {
        "fp32_unfused": {
            "path": run / "export" / "model.onnx",
            "optimization": "disable",
            "precision": "fp32",
            "what": "exported student ONNX, ORT_DISABLE_ALL",
        },
        "fp32_fused": {
            "path": ort_dir / "model_fp32.onnx",
            "optimization": "all",
            "precision": "fp32",
            "what": "kdc fp32 engine (transformer fusion), ORT_ENABLE_ALL",
        },
        "int8_fused": {
            "path": ort_dir / "model_int8.onnx",
            "optimization": "all",
            "precision": "int8",
            "what": "kdc int8 engine (static QDQ), ORT_ENABLE_ALL",
        },
    }
    out = {k: v for k, v in out.items() if v["path"].is_file()}
    src = out.get("fp32_fused", out.get("fp32_unfused"))
    if src is not None:
        dyn = scratch / "model_int8_dynamic.onnx"
        try:
            quantize_dynamic_int8(src["path"], dyn)
            out["int8_dynamic"] = {
                "path": dyn,
                "optimization": "all",
                "precision": "int8",
                "what": f"dynamic INT8 (quantize_dynamic) of {src['path'].name}, ORT_ENABLE_ALL",
                "scratch": True,
            }
        except Exception as e:  # recorded, not fatal: the dynamic variant is an extra
            out["int8_dynamic"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    return out


def time_variant(v: dict, inputs: dict, threads: int, iterations: int, min_s: float) -> dict:
    session = make_session(v["path"], threads=threads, optimization=v["optimization"])
    feed = feed_for(session, {k: a[:1] for k, a in inputs.items()})
    stats = measure_callable(
        lambda: session.run(None, feed),
        warmup=50,
        warmup_s=0.5,
        iterations=iterations,
        min_duration_s=min_s,
    )
    return {
        "kind": "measured",
        "session": session_options_record(session),
        "input_shape": {k: list(a.shape) for k, a in feed.items()},
        **stats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "sentiment-host"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--min-duration", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    run = Path(args.run).resolve()
    threads = [int(t) for t in args.threads.split(",")]
    console = Console(width=130)
    cfg = config_of_run(run)
    ctx = open_run(cfg, "host", run, quiet=True)
    x_eval = ctx.encode("eval")
    first = {k: v[:1] for k, v in x_eval.items()}
    mask = first.get("attention_mask")
    t0 = time.perf_counter()
    t_acc, t_logits = evaluate(ctx, run / "export" / "teacher.onnx", None)
    console.print(f"teacher: accuracy {t_acc['accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)")

    with tempfile.TemporaryDirectory(prefix="kdc-bench-engines-") as scratch:
        vs = variants(run, Path(scratch))
        rows: dict[str, dict] = {}
        for name, v in vs.items():
            if "error" in v:
                rows[name] = {"error": v["error"]}
                continue
            acc, _ = evaluate(ctx, v["path"], t_logits, optimization=v["optimization"])
            rows[name] = {
                "what": v["what"],
                "path": str(v["path"].relative_to(run)) if not v.get("scratch") else None,
                "optimization": v["optimization"],
                "precision": v["precision"],
                "size_mb": round(v["path"].stat().st_size / 1e6, 4),
                "ops_in_file": dict(list(count_ops(v["path"]).items())[:12]),
                "fused_ops_at_runtime": runtime_ops(v["path"], v["optimization"], Path(scratch)),
                "accuracy": {k: acc[k] for k in ("accuracy", "macro_f1", "agreement", "n")},
                "latency": {},
            }
            console.print(f"{name}: accuracy {acc['accuracy']:.4f}, agree {acc['agreement']:.4f}")
        timed = [n for n in rows if "error" not in rows[n]]
        for th in threads:
            for r in range(args.rounds):
                order = timed if r % 2 == 0 else list(reversed(timed))
                for name in order:
                    m = time_variant(vs[name], first, th, args.iterations, args.min_duration)
                    m["load_average"] = os.getloadavg()
                    prev = rows[name]["latency"].get(str(th))
                    m["rounds_p50_ms"] = [*(prev or {}).get("rounds_p50_ms", []), m["p50_ms"]]
                    if prev is None or m["p50_ms"] < prev["p50_ms"]:
                        rows[name]["latency"][str(th)] = m
                    else:
                        prev["rounds_p50_ms"] = m["rounds_p50_ms"]
                    console.print(f"  {th}t round {r + 1} {name}: p50 {m['p50_ms']:.3f} ms")

    def p50(name: str, th: int) -> float | None:
        return rows.get(name, {}).get("latency", {}).get(str(th), {}).get("p50_ms")

    def ratio(a: str, b: str, th: int) -> float | None:
        pa, pb = p50(a, th), p50(b, th)
        return round(pa / pb, 3) if pa and pb else None

    speedups = {str(th): ratio("fp32_unfused", "int8_fused", th) for th in threads}
    breakdown = {
        str(th): {
            "fusion (fp32_unfused / fp32_fused)": ratio("fp32_unfused", "fp32_fused", th),
            "int8 over fused fp32 (fp32_fused / int8_fused)": ratio("fp32_fused", "int8_fused", th),
            "dynamic int8 (fp32_unfused / int8_dynamic)": ratio("fp32_unfused", "int8_dynamic", th),
        }
        for th in threads
    }
    flags = cpu_flags()
    protocol_shape = {k: list(v.shape) for k, v in first.items()}
    flops = predict(ctx, run / "export" / "model.onnx", "fp32").get("flops")
    for r in rows.values():
        for lat in r.get("latency", {}).values():
            lat["gflop_per_s"] = round(flops / lat["p50_ms"] / 1e6, 1) if flops else None
    mhz = cpu_mhz()
    isa = "AVX-512" if flags.get("avx512f") else "AVX2"
    peak = round(mhz * FP32_FLOPS_PER_CYCLE[isa] / 1e3, 1) if mhz else None
    rt = rows.get("fp32_fused", {}).get("fused_ops_at_runtime")
    attention_fused = isinstance(rt, dict) and any("Attention" in k for k in rt)
    eff = rows.get("fp32_unfused", {}).get("latency", {}).get(str(threads[0]), {})
    headline = speedups.get(str(threads[0]))
    met = {th: (s is not None and s >= GOAL) for th, s in speedups.items()}
    why = []
    if not all(met.values()):
        near_peak = bool(peak and eff.get("gflop_per_s") and eff["gflop_per_s"] > 0.5 * peak)
        lead = "the unfused fp32 graph already runs near this core's fp32 peak: "
        tail = (
            "; there is little overhead for fusion to remove and int8 can only win "
            "through a higher multiply-accumulate rate"
        )
        why.append(
            (lead if near_peak else "fp32 unfused: ")
            + f"{eff.get('gflop_per_s')} GFLOP/s at {threads[0]} thread (kdc's FLOPs count "
            f"{flops:.3g} per inference) against ~{peak} GFLOP/s {isa} FMA peak at the nominal "
            f"{mhz} MHz" + (tail if near_peak else "")
        )
        why.append(
            "no VNNI on this CPU (avx512_vnni/avx_vnni absent): ONNX Runtime's int8 GEMMs use "
            "AVX2 u8s8 multiply-adds (vpmaddubsw + vpmaddwd), roughly 2x the fp32 FMA rate at "
            "best, not the 4x VNNI gives; and the QDQ engine keeps Add/Softmax/LayerNorm in "
            "float with (De)QuantizeLinear at every quantized MatMul boundary"
            if not flags.get("vnni")
            else "VNNI present, yet the fused int8 engine is only "
            f"{breakdown[str(threads[0])]['int8 over fused fp32 (fp32_fused / int8_fused)']}x the "
            "fused fp32 one: the QDQ engine keeps Add/Softmax/LayerNorm in float with "
            "(De)QuantizeLinear at every quantized MatMul boundary, a share int8 does not shrink"
        )
        if not attention_fused and ctx.teacher.family == "transformer":
            why.append(
                "ORT's transformer optimizer fused SkipLayerNormalization but not Attention on "
                "this exported graph (fused_ops_at_runtime), and the INT8 engine is quantized "
                "from the exported (not the fused) graph"
            )
        why.append(
            f"batch 1 at input shape {protocol_shape} is a small workload: per-op dispatch and "
            "the float ops left outside the int8 MatMuls take a fixed share that neither fusion "
            "nor int8 removes"
        )
    notes = []
    for name in timed:
        lat = rows[name]["latency"]
        if len(threads) > 1 and all(str(t) in lat for t in threads):
            one, more = lat[str(min(threads))]["p50_ms"], lat[str(max(threads))]["p50_ms"]
            if more > one:
                notes.append(
                    f"{name}: {max(threads)} threads slower than {min(threads)} ({more:.2f} vs "
                    f"{one:.2f} ms p50): the cores were shared with other jobs (load_average in "
                    "each latency record), so extra intra-op threads waited for a core; the "
                    f"{min(threads)}-thread figures are the ones to read"
                )
    result = {
        "bench": "engines",
        "issue": 6,
        "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
        "model": cfg.name,
        "goal": f"p50(fp32_unfused) / p50(int8_fused) >= {GOAL}",
        "speedup": headline,
        "speedup_threads": threads[0],
        "speedup_by_threads": speedups,
        "goal_met": met,
        "breakdown": breakdown,
        "why_not": why or None,
        "notes": notes or None,
        "student_flops": flops,
        "attention_fused": attention_fused,
        "fp32_peak_gflop_per_s_estimate": {
            "value": peak,
            "how": f"cpu MHz {mhz} x {FP32_FLOPS_PER_CYCLE[isa]} flop/cycle ({isa}, 2 FMA pipes)",
        },
        "fp32_unfused_p50_ms": {str(th): p50("fp32_unfused", th) for th in threads},
        "int8_fused_p50_ms": {str(th): p50("int8_fused", th) for th in threads},
        "fp32_unfused_accuracy": rows.get("fp32_unfused", {}).get("accuracy"),
        "int8_fused_accuracy": rows.get("int8_fused", {}).get("accuracy"),
        "teacher_accuracy": {k: t_acc[k] for k in ("accuracy", "macro_f1", "n")},
        "variants": rows,
        "protocol": {
            "batch": 1,
            "input": "first eval row; text padded to data.max_length as kdc encodes it",
            "input_shape": {k: list(v.shape) for k, v in first.items()},
            "seq_length": int(first["input_ids"].shape[1]) if "input_ids" in first else None,
            "real_tokens_in_row": int(mask.sum()) if mask is not None else None,
            "warmup": "50 calls and 0.5 s",
            "iterations": f">= {args.iterations} and >= {args.min_duration} s",
            "rounds": args.rounds,
            "kept": "lowest p50 over rounds (all in rounds_p50_ms)",
            "inter_op_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
            "accuracy_split": f"eval ({len(x_eval[next(iter(x_eval))])} rows)",
            "accuracy_threads": cfg.verify.threads,
        },
        "machine": {
            "cpu": cpu_info()[0],
            "cores_usable": len(os.sched_getaffinity(0)),
            "flags": flags,
            "shared": "2 cores shared with other jobs while measured (see load_average)",
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(args.out, result)

    table = Table(title=f"{cfg.name}: ONNX Runtime engines, batch 1 ({run.name})")
    for col in ("variant", "accuracy", "macro-F1", "agreement", "size MB"):
        table.add_column(col)
    for th in threads:
        table.add_column(f"p50 ms {th}t", justify="right")
    for name, r in rows.items():
        if "error" in r:
            table.add_row(name, r["error"])
            continue
        a = r["accuracy"]
        table.add_row(
            name,
            f"{a['accuracy']:.4f}",
            f"{a['macro_f1']:.4f}",
            f"{a['agreement']:.4f}",
            f"{r['size_mb']:.2f}",
            *[f"{p50(name, th):.3f}" if p50(name, th) else "–" for th in threads],
        )
    console.print(table)
    console.print(
        f"speedup fp32_unfused/int8_fused: {speedups} (goal {GOAL}x); VNNI: {flags.get('vnni')}"
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
