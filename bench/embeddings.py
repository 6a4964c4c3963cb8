"""Sentence-embedding students against the obvious alternatives (issue #10).

    python bench/embeddings.py [--epochs N] [--threads 1] [--rows kdc,plain_cosine_kd,...] [--merge]

(--merge keeps rows of bench/results/embeddings.json not run now; a row whose scratch run
directory already holds finished search/distill/export stages with the same inputs reuses them
and only rebuilds its engines.)

On examples/embeddings (all-MiniLM-L6-v2 teacher, drugsCom sentences; run its prepare.py first),
one student architecture with >= 4x fewer FLOPs than the teacher (STUDENT: 2 layers, FFN 1536 ->
768) for every row, each a kdc run driven by a config variant written outside the repo:
  kdc              teacher layers evenly spaced (2, 5), kdc's default losses for the task
                   (embedding: cosine + MSE, relation: RKD), the FP32 ONNX Runtime engine
  kdc_int8         the same run's INT8 engine (static QDQ, as kdc ships it)
  plain_cosine_kd  the teacher's first layers (0, 1), same sizes, trained with the cosine loss only
  truncated_layers the teacher's first layers (0, 1), same sizes, no training
Same epochs, learning rate, data and seed for the trained rows (the example's distill section).
Metrics (kdc's verify code: mean cosine to the teacher, Spearman of pairwise similarities,
neighbour recall@10 asymmetric/symmetric) on the held-out sentences against the teacher's
exported ONNX; FLOPs by kdc's counter (fp32 graph, batch 1, the eval shape); p50 by kdc's latency
protocol (ONNX Runtime, batch 1, --threads).
Writes bench/results/embeddings.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from kdc.api import open_run  # noqa: E402
from kdc.config import load_config  # noqa: E402
from kdc.errors import UserError  # noqa: E402
from kdc.pipeline import run_stages  # noqa: E402
from kdc.rundir import read_json, write_json  # noqa: E402
from kdc.stages.verify import evaluate, measure_all, predict  # noqa: E402

OUT = ROOT / "bench" / "results" / "embeddings.json"
EXAMPLE = ROOT / "examples" / "embeddings" / "model.yaml"
SCRATCH = Path(os.environ.get("KDC_BENCH_SCRATCH", "/tmp/kdc-bench-embeddings"))
STUDENT = {"num_hidden_layers": 2, "intermediate_size": 768}
METRICS = ("mean_cosine", "spearman", "neighbour_recall_at_10_asym", "neighbour_recall_at_10_sym")
COSINE_ONLY = [{"name": "embedding", "params": {"cosine": 1.0, "mse": 0.0, "on": "output"}}]
RUNS: dict[str, dict] = {
    "kdc": {"layers": None, "losses": None, "int8": True},
    "plain_cosine_kd": {"layers": [0, 1], "losses": COSINE_ONLY, "int8": False},
    "truncated_layers": {"layers": [0, 1], "losses": COSINE_ONLY, "int8": False, "epochs": 0},
}
BAR = {"min_flops_ratio": 4.0, "min_mean_cosine": 0.80, "max_int8_cosine_cost": 0.01}


def row_config(name: str, epochs: int | None, threads: int) -> Path:
    """The example's config with the row's student, losses and epochs (absolute paths)."""
    base = load_config(EXAMPLE)
    d = base.model_dump(mode="json")
    for sec, key in (("teacher", "path"), ("data", "source"), ("data", "eval")):
        d[sec][key] = str(base.resolve(d[sec][key]).resolve())
    spec = RUNS[name]
    d["name"] = f"{base.name}-{name}"
    d["student"] = {"architecture": STUDENT}
    if spec["layers"]:
        d["student"]["layers"] = spec["layers"]
    d["distill"]["losses"] = spec["losses"]
    d["distill"]["epochs"] = spec.get("epochs", epochs or d["distill"]["epochs"])
    d["quantize"]["precision"] = "int8" if spec["int8"] else "fp32"
    d["build"]["engines"] = ["onnxruntime"]
    d["verify"]["threads"] = threads
    path = SCRATCH / name / "model.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def scored(ctx, path: Path, precision: str, ref) -> dict:
    """The four metrics, FLOPs and measured p50 of one ONNX model."""
    res, _ = evaluate(ctx, path, ref)
    lat = measure_all(ctx, {"model": (path, precision)})["model"]
    return {
        **{k: round(float(res[k]), 4) for k in METRICS},
        "n_eval": res["n"],
        "flops": predict(ctx, path, "fp32").get("flops"),
        "p50_ms": round(lat["p50_ms"], 3),
        "p99_ms": round(lat["p99_ms"], 3),
        "latency": {k: lat.get(k) for k in ("device", "threads", "batch", "input_shape", "cv")},
    }


def run_one(name: str, epochs: int | None, threads: int, teacher: dict | None) -> tuple[dict, dict]:
    """Train (or not) and score one run; returns its rows and the teacher record."""
    cfg_path = row_config(name, epochs, threads)
    cfg = load_config(cfg_path)
    ctx = open_run(cfg, "host", SCRATCH / name / "run", quiet=True)
    t0 = time.perf_counter()
    try:  # search, distill and export already finished here with the same inputs are reused
        run_stages(ctx, resume=True, only=("build",))
    except UserError:
        run_stages(ctx, resume=False, only=("search", "distill", "export", "build"))
    wall = round(time.perf_counter() - t0, 1)
    run = ctx.run
    if teacher is None:
        t_path = run / "export" / "teacher.onnx"
        _, t_out = evaluate(ctx, t_path, None)
        teacher = {**scored(ctx, t_path, "fp32", t_out), "params": ctx.teacher.params()}
        teacher["_out"] = t_out
    dist = run.stage("distill")["metrics"]
    common = {
        "student": read_json(run / "distill" / "student.json")["spec"],
        "params": dist["student_params"],
        "losses": RUNS[name]["losses"] or "kdc default (embedding + relation)",
        "epochs": cfg.distill.epochs,
        "kept_epoch": dist.get("kept_epoch"),
        "wall_s": wall,  # of this invocation (resumed stages take none)
        "stage_wall_s": {k: v.get("wall_s") for k, v in run.manifest()["stages"].items()},
        "config": str(cfg_path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    engines = {e["precision"]: e for e in read_json(run / "build" / "engines.json")}
    rows = {name: {**scored(ctx, run / engines["fp32"]["path"], "fp32", teacher["_out"]), **common}}
    if RUNS[name]["int8"]:
        q = engines["int8"]
        rows[f"{name}_int8"] = {
            **scored(ctx, run / q["path"], "int8", teacher["_out"]),
            **common,
            "quantization": q.get("quantization"),
        }
    for r in rows.values():
        r["engine"] = "onnxruntime-cpu (the engine kdc builds; metrics and p50 from it)"
    return rows, teacher


def verdict(teacher: dict, rows: dict) -> dict:
    k, q, plain = rows.get("kdc"), rows.get("kdc_int8"), rows.get("plain_cosine_kd")
    out: dict = {"bar": BAR}
    if k:
        out["flops_ratio"] = round(teacher["flops"] / k["flops"], 2)
        out["mean_cosine_ok"] = k["mean_cosine"] >= BAR["min_mean_cosine"]
        out["flops_ok"] = out["flops_ratio"] >= BAR["min_flops_ratio"]
    if k and plain:
        out["beats_plain_on"] = {m: k[m] > plain[m] for m in METRICS}
    if k and q:
        out["int8_cosine_cost"] = round(k["mean_cosine"] - q["mean_cosine"], 4)
        out["int8_ok"] = out["int8_cosine_cost"] <= BAR["max_int8_cosine_cost"]
    checks = ("mean_cosine_ok", "flops_ok", "int8_ok")
    out["met"] = all(out.get(c) for c in checks) and all(
        out.get("beats_plain_on", {0: False}).values()
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="default: the example's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default=",".join(RUNS))
    ap.add_argument("--merge", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows: dict = {}
    teacher = None
    for name in args.rows.split(","):
        new, teacher = run_one(name, args.epochs, args.threads, teacher)
        rows.update(new)
        Console().print(f"{name}: " + ", ".join(f"{k} {v['mean_cosine']}" for k, v in new.items()))
    teacher.pop("_out")
    if args.merge and OUT.is_file():  # keep the other rows (rows may run in separate processes)
        rows = {**read_json(OUT)["rows"], **rows}
    res = {
        "bench": "embeddings",
        "issue": 10,
        "example": str(EXAMPLE.relative_to(ROOT)),
        "data": "drugsCom train-review sentences for training, test-review sentences (first "
        "1,000) held out; no other text",
        "teacher": teacher,
        "rows": rows,
        "verdict": verdict(teacher, rows),
        "threads": args.threads,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(OUT, res)
    epochs = next(r["epochs"] for r in rows.values())
    table = Table(title=f"sentence embeddings ({epochs} epochs, {args.threads} thread)")
    for col in ("row", *METRICS, "GFLOPs", "p50 ms"):
        table.add_column(col)
    for name, r in {"teacher": teacher, **rows}.items():
        vals = [f"{r[m]:.4f}" for m in METRICS]
        table.add_row(name, *vals, f"{r['flops'] / 1e9:.3f}", f"{r['p50_ms']:.3f}")
    Console().print(table)
    Console().print(res["verdict"])
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
