"""kdc against what a user would do instead, measured side by side (issue #9).

    python bench/compare.py [--example digits|sentiment] [--quick] [--only ROW ...]
        [--epochs N] [--seed N] [--budget-config JSON] [--base-ms F] [--rounds N]
        [--reuse-calibration]

Per example (default: both) builds every row (ROWS; the optional QAT rows only when named in
--only) from its teacher and data and measures all
with one protocol: accuracy / macro-F1 / agreement with the PyTorch FP32 teacher of the engine
itself on the eval split; batch-1 p50/p99 and batch-32 throughput at 1 intra-op thread
(kdc.deploy.latency; at the end all rows are re-timed in interleaved rounds); size on disk; peak
RSS of a fresh process running the model (kdc.deploy.memory); wall time to produce the model
from the trained teacher. kdc rows run through bench/pipeline.py's `run_kdc`. Writes
bench/results/compare_<example>.json (after every row) and the table in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from compare_report import (  # noqa: E402
    COLUMNS,
    OPTIONAL,
    ROWS,
    THREADS,
    markdown_table,
    update_results_md,
    verdict,
)
from pipeline import (  # noqa: E402
    EXAMPLES,
    SCRATCH,
    calibrate_host,
    json_object,
    machine,
    run_kdc,
    write_config,
)

from kdc.deploy import metrics as M  # noqa: E402
from kdc.deploy.latency import measure_callable, measure_onnx, throughput  # noqa: E402
from kdc.deploy.memory import engine_peak_rss_mb  # noqa: E402
from kdc.deploy.onnxruntime import make_session, run_session  # noqa: E402
from kdc.rundir import read_json, write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# torch threads of every kdc stage: 2 oversubscribe this shared machine (5x slower distill)
TRAIN_THREADS = 1
# the DistilBERT-style student of each example: every other teacher layer / half the channels
DISTILBERT_STUDENT = {"digits": {"width": 0.5}, "sentiment": {"layers": [0, 2, 4]}}


@dataclass
class Bench:
    """One example: its config, run context (data, teacher, encoded inputs) and scratch files."""

    example: str
    quick: bool
    ctx: object
    work: Path
    ref: np.ndarray  # teacher PyTorch FP32 logits on the eval split
    files: dict[str, Path] = field(default_factory=dict)
    walls: dict[str, float] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    epochs: int | None = None  # distill epochs of the kdc rows (None: the example's)
    seed: int | None = None  # the kdc rows' seed (None: the example's)
    extra: dict = field(default_factory=dict)  # config sections merged into the budget rows'
    base_ms: float | None = None  # row 2's p50 the budget rows divide (None: measured)
    budgets: dict[int, float] = field(default_factory=dict)  # factor → ms, once per process

    cfg = property(lambda self: self.ctx.cfg)

    def x(self, split: str = "eval") -> dict[str, np.ndarray]:
        return self.ctx.encode(split)

    def one(self) -> dict[str, np.ndarray]:
        return {k: v[:1] for k, v in self.x().items()}

    def calibration(self, batch: int = 16) -> list[dict[str, np.ndarray]]:
        """The rows kdc's build stage calibrates on: the first calibration_size train rows."""
        x = self.x("train")
        n = min(self.cfg.quantize.calibration_size, len(next(iter(x.values()))))
        return [{k: v[s : s + batch] for k, v in x.items()} for s in range(0, n, batch)]


def setup(example: str, quick: bool) -> Bench:
    from kdc.api import open_run

    torch.set_num_threads(THREADS)
    (work := SCRATCH / f"compare-{example}").mkdir(parents=True, exist_ok=True)
    ctx = open_run(EXAMPLES[example], "host", work / "ctx", quiet=True)
    with torch.no_grad():
        ref = ctx.teacher.forward_numpy(ctx.encode("eval"))
    return Bench(example, quick, ctx, work, ref)


def protocol(quick: bool) -> dict:
    """Timing arguments (measure_callable's names): batch 1 latency, batch 32 throughput."""
    return {
        "threads": THREADS,
        "latency": {"warmup": 10, "iterations": 50 if quick else 100, "min_duration_s": 1.0}
        | {"max_duration_s": 10.0},
        "throughput": {"iterations": 2 if quick else 3, "min_duration_s": 1.0},
    }


def quality(b: Bench, logits: np.ndarray) -> dict:
    """Accuracy, macro-F1, agreement and the 95 % interval of the accuracy drop against the
    PyTorch teacher (paired over the eval rows)."""
    m = M.compute(b.cfg.task, b.ctx.dataset.eval.labels, logits, b.ref)
    q = {k: round(float(m[k]), 4) for k in ("accuracy", "macro_f1", "agreement")}
    ci = m["accuracy_drop_ci95"]
    return {**q, "accuracy_drop_ci95": [round(v, 4) for v in ci] if ci else None}


def size_mb(path: Path) -> float:
    extra = sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
    return round((path.stat().st_size + extra) / 1e6, 3)


def onnx_timing(b: Bench, path: Path, precision: str = "fp32") -> tuple[dict, float]:
    """Batch-1 latency object and batch-32 items/s of an ONNX model (bench protocol)."""
    p = protocol(b.quick)
    lat = measure_onnx(path, b.one(), threads=THREADS, precision=precision, **p["latency"])
    thr = throughput(path, b.x(), 32, threads=THREADS, precision=precision, **p["throughput"])
    return lat, thr["items_per_s"]


def engine_row(b: Bench, path: Path, precision: str, how: str, wall_s: float) -> dict:
    """Every column of an ONNX Runtime engine, measured with the bench protocol."""
    logits = run_session(make_session(path, threads=THREADS), b.x())
    lat, items = onnx_timing(b, path, precision)
    mem = engine_peak_rss_mb(path, b.one(), threads=THREADS)
    return {
        **quality(b, logits),
        "p50_ms": round(lat["p50_ms"], 4),
        "p99_ms": round(lat["p99_ms"], 4),
        "throughput_b32": round(items, 1),
        "size_mb": size_mb(path),
        "peak_rss_mb": mem["peak_rss_mb"],
        "wall_s": round(wall_s, 2),
        "how": how
        + f"; ONNX Runtime {lat['provider']}, {THREADS} intra-op thread, batch 1 p50/p99 over "
        f"{lat['iterations']} runs, throughput at batch 32; peak RSS = VmHWM of a fresh process "
        "(Python + ONNX Runtime + model, 3 runs at batch 1)",
        "engine_mb": mem["engine_mb"],
        "precision": precision,
        "latency_cv": round(lat["cv"], 4),
        "latency_warnings": lat["warnings"],
        "path": str(path),
    }


_TORCH_PROBE = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[3])
from kdc.config import load_config
from kdc.models import load_teacher
t = load_teacher(load_config(sys.argv[1]))
x = dict(np.load(sys.argv[2]))
with torch.no_grad():
    for _ in range(3):
        t.forward_numpy(x)
kb = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": kb / 1024}))
"""


def torch_timing(b: Bench) -> tuple[dict, float]:
    """Batch-1 latency stats and batch-32 items/s of the PyTorch teacher, eager."""
    p = protocol(b.quick)
    t = b.ctx.teacher
    mod = t.module.eval()

    def call(inputs: dict[str, np.ndarray]):
        args = [torch.from_numpy(inputs[k]) for k in t.input_names]
        return lambda: mod(*args)

    x32 = {k: np.resize(v, (32, *v.shape[1:])) for k, v in b.x().items()}
    torch.set_num_threads(THREADS)
    with torch.no_grad():
        lat = measure_callable(call(b.one()), **p["latency"])
        thr = measure_callable(call(x32), warmup=2, **p["throughput"])
    return lat, 32 / (thr["mean_ms"] / 1e3)


def row_teacher_torch_fp32(b: Bench) -> dict:
    lat, items = torch_timing(b)
    mod = b.ctx.teacher.module
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "x.npz"
        np.savez(npz, **b.one())
        out = subprocess.run(
            [sys.executable, "-c", _TORCH_PROBE, str(EXAMPLES[b.example]), str(npz)] + [str(ROOT)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    rss = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    nbytes = sum(v.numel() * v.element_size() for v in mod.state_dict().values())
    return {
        **quality(b, b.ref),
        "p50_ms": round(lat["p50_ms"], 4),
        "p99_ms": round(lat["p99_ms"], 4),
        "throughput_b32": round(items, 1),
        "size_mb": round(nbytes / 1e6, 3),
        "peak_rss_mb": round(rss, 1),
        "wall_s": 0.0,
        "precision": "fp32",
        "how": f"the trained teacher as given (nothing to produce: wall 0), PyTorch "
        f"{torch.__version__} eager, torch.no_grad, torch.set_num_threads({THREADS}); "
        f"batch 1 p50/p99 over {lat['iterations']} runs, throughput at batch 32; size = "
        "state_dict bytes; peak RSS = VmHWM of a fresh process (Python + torch + kdc loader + "
        "model, 3 runs at batch 1)",
        "latency_cv": round(lat["cv"], 4),
        "latency_warnings": lat["warnings"],
    }


def teacher_onnx(b: Bench) -> tuple[Path, float]:
    """The teacher exported as kdc's export stage does it (raw, checked, onnxslim)."""
    from kdc.export.onnx_export import export_onnx

    if "raw" not in b.files:
        t0 = time.perf_counter()
        example = {k: np.asarray(v[:2]) for k, v in b.x("train").items()}
        b.files["raw"] = export_onnx(
            b.ctx.teacher, example, b.work / "teacher.onnx", opset=b.cfg.export.opset
        )
        b.walls["raw"] = time.perf_counter() - t0
    return b.files["raw"], b.walls["raw"]


def row_teacher_ort_fp32(b: Bench) -> dict:
    from kdc.deploy.onnxruntime import optimize

    raw, t_export = teacher_onnx(b)
    t0 = time.perf_counter()
    arch = b.ctx.teacher.architecture()
    fam = b.ctx.teacher.family
    path = optimize(
        raw,
        b.work / "teacher_fp32.onnx",
        family=fam,
        num_heads=arch.get("num_attention_heads") or 0,
        hidden_size=arch.get("hidden_size") or 0,
    )
    b.files["fp32"] = path
    b.walls["fp32"] = t_export + time.perf_counter() - t0
    opt = "transformer fusion" if fam == "transformer" else "ORT_ENABLE_EXTENDED offline"
    how = (
        f"teacher exported by kdc's exporter (TorchScript, opset {b.cfg.export.opset}, onnxslim), "
        f"optimised by kdc.deploy.onnxruntime.optimize ({opt}); wall = export + optimise"
    )
    return engine_row(b, path, "fp32", how, b.walls["fp32"])


def row_teacher_ort_int8_dynamic(b: Bench) -> dict:
    from kdc.deploy.onnxruntime import quantize_dynamic_int8

    if "fp32" not in b.files:
        row_teacher_ort_fp32(b)
    t0 = time.perf_counter()
    path = quantize_dynamic_int8(b.files["fp32"], b.work / "teacher_int8_dynamic.onnx")
    how = (
        "ONNX Runtime quantize_dynamic (int8 weights, activations quantised at run time, no "
        "calibration; what `optimum-cli onnxruntime quantize` does) of the optimised FP32 "
        "teacher; wall = export + optimise + quantise"
    )
    return engine_row(b, path, "int8", how, b.walls["fp32"] + time.perf_counter() - t0)


def row_teacher_ort_int8_static(b: Bench) -> dict:
    from kdc.deploy.onnxruntime import QUANT_OPS, quantize_int8

    raw, t_export = teacher_onnx(b)
    fam = b.ctx.teacher.family
    t0 = time.perf_counter()
    path = quantize_int8(
        raw,
        b.work / "teacher_int8_static.onnx",
        b.calibration(),
        symmetric_activations=False,
        method=b.cfg.quantize.calibration,
        op_types=QUANT_OPS.get(fam),
    )
    ops = QUANT_OPS.get(fam) or "ORT default ops"
    how = (
        f"kdc.deploy.onnxruntime.quantize_int8 of the exported teacher: static QDQ, "
        f"{b.cfg.quantize.calibration} calibration on the first "
        f"{b.cfg.quantize.calibration_size} train rows, uint8 asymmetric activations, int8 "
        f"per-channel weights, ops {ops} (kdc's host recipe); wall = export + quantise"
    )
    return engine_row(b, path, "int8", how, t_export + time.perf_counter() - t0)


def row_teacher_nncf_int8(b: Bench) -> dict:
    import onnx

    from kdc.compress.nncf_quiet import import_nncf, quantize

    nncf = import_nncf()

    raw, t_export = teacher_onnx(b)
    t0 = time.perf_counter()
    model = onnx.load(str(raw))
    names = {i.name for i in model.graph.input}
    items = [{k: v for k, v in x.items() if k in names} for x in b.calibration()]
    transformer = b.ctx.teacher.family == "transformer"
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    q = quantize(model, items, **kwargs)
    onnx.save(q, str(path := b.work / "teacher_nncf_int8.onnx"))
    how = (
        f"NNCF {nncf.__version__} post-training quantisation (nncf.quantize, ONNX backend, "
        f"default preset{', model_type TRANSFORMER' if transformer else ''}) of the exported "
        f"teacher, calibrated on the same {b.cfg.quantize.calibration_size} train rows; "
        "wall = export + quantise"
    )
    return engine_row(b, path, "int8", how, t_export + time.perf_counter() - t0)


def epochs_for(b: Bench) -> int:
    return b.epochs or (2 if b.quick else b.cfg.distill.epochs)


def epochs_text(b: Bench) -> str:
    n, full = epochs_for(b), b.cfg.distill.epochs
    why = "--quick" if b.quick and not b.epochs else "--epochs"
    return f"{n} distill epochs" + (f" (example: {full}; {why})" if n != full else "")


def kdc_run(b: Bench, name: str, changes: dict) -> dict:
    """A kdc compress of the example with `changes`, in scratch; the run record."""
    changes = {**json.loads(json.dumps(changes)), "name": f"bench-{b.example}-{name}"}  # a copy
    changes.setdefault("distill", {})["epochs"] = epochs_for(b)
    if b.seed is not None:
        changes["seed"] = b.seed
    changes.setdefault("verify", {})["threads"] = THREADS
    if b.quick:
        changes.setdefault("search", {})["time_budget_s"] = 20
    cfg = write_config(EXAMPLES[b.example], changes, b.work / f"{name}.yaml")
    return run_kdc(cfg, b.work / f"run-{name}", threads=TRAIN_THREADS)


def _engine_of(run: dict, precision: str | None) -> Path:
    report = read_json(Path(run["run_dir"]) / "report.json")
    for e in report["engines"]:
        if e.get("engine") == "onnxruntime" and (
            e.get("precision") == precision if precision else e.get("ships")
        ):
            return Path(run["run_dir"]) / e["path"]
    return Path(run["run_dir"]) / "build" / "onnxruntime" / f"model_{precision or 'int8'}.onnx"


def _failed_row(run: dict, how: str) -> dict:
    f = run["failed"]
    return {
        **{c: None for c in COLUMNS},
        "wall_s": run["wall_s"],
        "peak_rss_mb": run["peak_rss_mb"],
        "how": how + f"; FAILED at {f['stage']} (exit {f['exit_code']}): {f['log_tail'][-1]}",
        "kdc_run": run,
    }


def _distilbert(b: Bench, precision: str) -> dict:
    if "distilbert" not in b.runs:
        changes = {
            "student": DISTILBERT_STUDENT[b.example],
            "search": {"strategy": "fixed"},
            "distill": {"losses": [{"name": "logits"}], "augment": "none"},
            # exported as optimum-onnx exports it: the [CLS]-only last layer is kdc's
            "export": {"cls_only_last_layer": False},
        }
        b.runs["distilbert"] = kdc_run(b, "distilbert", changes)
    run = b.runs["distilbert"]
    d = b.cfg.distill
    student = DISTILBERT_STUDENT[b.example]
    what = (
        f"layers {student['layers']} of the teacher's"
        if "layers" in student
        else f"width {student['width']} of each conv's channels"
    )
    engine = "ORT optimised graph" if precision == "fp32" else "kdc's static QDQ (uint8 asym)"
    how = (
        f"DistilBERT-style student ({what}, initialised from the teacher) distilled by kdc with "
        f"only the logit loss, no augmentation (T={d.temperature}, alpha={d.alpha}, "
        f"{epochs_text(b)}, torch threads {TRAIN_THREADS}), exported (full last layer, as "
        f"optimum-onnx does) and built by kdc (--target host); engine: {engine}; wall = the "
        "whole kdc run (search..verify), shared by the fp32 and int8 rows"
    )
    if run["failed"]:
        return _failed_row(run, how)
    row = engine_row(b, _engine_of(run, precision), precision, how, run["wall_s"])
    return {**row, "kdc_run": run}


# Every kdc process of the bench reads its calibration from here (stage_env copies os.environ).
os.environ["KDC_CONFIG_DIR"] = str(SCRATCH / "kdc-config")


def _budget(b: Bench, factor: int, rows: dict, qat: bool = False) -> dict:
    base = rows.get("teacher_ort_fp32") or row_teacher_ort_fp32(b)
    cal = calibrate_host(THREADS, TRAIN_THREADS)
    if factor not in b.budgets:  # PTQ and QAT rows of one process share it
        if b.base_ms is None:  # the quieter of the table's timing and a fresh one
            lat = protocol(b.quick)["latency"]
            fresh = measure_onnx(base["path"], b.one(), threads=THREADS, **lat)
            b.base_ms = min(base["p50_ms"], fresh["p50_ms"])
        b.budgets[factor] = round(b.base_ms / factor, 4)
    budget = b.budgets[factor]
    changes = {
        "search": {"strategy": "evolution", **b.extra.get("search", {})},
        "student": None,  # the example's fixed student: the search picks one
        "constraints": {"latency_budget_ms": budget},
        **{k: v for k, v in b.extra.items() if k != "search"},  # e.g. prune
    }
    if qat:
        changes["quantize"] = {"method": "qat"}
    run = kdc_run(b, f"budget{factor}x" + "_qat" * qat, changes)
    how = (
        "kdc compress --target host with search.strategy evolution"
        + (", quantize.method qat" if qat else "")
        + (f", config {json.dumps(b.extra)}" if b.extra else "")
        + (f", seed {b.seed}" if b.seed is not None else "")
        + f" and constraints.latency_budget_ms {budget} (teacher_ort_fp32 p50 / {factor}), example "
        f"config otherwise ({epochs_text(b)}, default loss recipe, augment "
        f"{b.cfg.distill.augment}, {b.cfg.distill.select} epoch kept, torch threads "
        f"{TRAIN_THREADS}, verify.threads {THREADS}); host latency model calibrated first "
        + (
            f"(kdc calibrate --threads {THREADS}, {cal['wall_s']:.0f} s, not in wall)"
            if "wall_s" in cal
            else f"(kdc calibrate --threads {THREADS} of an earlier bench process, reused)"
        )
        + "; the engine kdc "
        "ships; wall = the whole run"
    )
    if run["failed"]:
        return _failed_row(run, how)
    report = read_json(Path(run["run_dir"]) / "report.json")
    engine = _engine_of(run, None)
    shipped = next((e for e in report["engines"] if e.get("ships")), {})
    precision = shipped.get("precision", "int8")
    if (report.get("student") or {}).get("export", {}).get("last_layer") == "cls-only":
        how += "; the student's last layer computes only [CLS] (export.cls_only_last_layer)"
    if shipped.get("optimization"):  # e.g. the masked-softmax floor (build.softmax_floor)
        how += f"; ONNX Runtime graph: {shipped['optimization']}"
    row = engine_row(b, engine, precision, how, run["wall_s"])
    student = read_json(Path(run["run_dir"]) / "search" / "student.json")
    return {  # the student that ships: as distilled (pruned), predicted as the search chose it
        **row,
        "budget_ms": budget,
        "student": read_json(Path(run["run_dir"]) / "distill" / "student.json")["architecture"],
        "predicted_latency_ms": student.get("predicted_latency_ms"),
        "kdc_passed": report.get("passed"),
        "kdc_run": run,
    }


BUILDERS = {
    "teacher_torch_fp32": lambda b, rows: row_teacher_torch_fp32(b),
    "teacher_ort_fp32": lambda b, rows: row_teacher_ort_fp32(b),
    "teacher_ort_int8_dynamic": lambda b, rows: row_teacher_ort_int8_dynamic(b),
    "teacher_ort_int8_static": lambda b, rows: row_teacher_ort_int8_static(b),
    "teacher_nncf_int8": lambda b, rows: row_teacher_nncf_int8(b),
    "distilbert_style_fp32": lambda b, rows: _distilbert(b, "fp32"),
    "distilbert_style_int8": lambda b, rows: _distilbert(b, "int8"),
    "kdc_budget_5x": lambda b, rows: _budget(b, 5, rows),
    "kdc_budget_10x": lambda b, rows: _budget(b, 10, rows),
    "kdc_budget_5x_qat": lambda b, rows: _budget(b, 5, rows, qat=True),
    "kdc_budget_10x_qat": lambda b, rows: _budget(b, 10, rows, qat=True),
}


def retime(b: Bench, rows: dict, rounds: int) -> None:
    """Time every row again in `rounds` interleaved rounds and keep, per row, the round with the
    lowest p50 (and the highest throughput): on a shared machine, the least-disturbed figures,
    all taken in the same few minutes."""
    timers = {"teacher_torch_fp32": lambda: torch_timing(b)} if "teacher_torch_fp32" in rows else {}
    for name in ROWS:
        r = rows.get(name) or {}
        if r.get("path") and Path(r["path"]).is_file():
            timers[name] = lambda r=r: onnx_timing(b, Path(r["path"]), r.get("precision", "fp32"))
    got: dict[str, list[tuple[dict, float]]] = {n: [] for n in timers}
    for i in range(rounds):
        print(f"== timing round {i + 1}/{rounds}", flush=True)
        for name, fn in timers.items():
            got[name].append(fn())
    for name, runs in got.items():
        lat = min((r[0] for r in runs), key=lambda x: x["p50_ms"])
        row = rows[name]
        row["p50_ms"], row["p99_ms"] = round(lat["p50_ms"], 4), round(lat["p99_ms"], 4)
        row["throughput_b32"] = round(max(r[1] for r in runs), 1)
        row["latency_cv"], row["latency_warnings"] = round(lat["cv"], 4), lat["warnings"]
        row["timing_rounds_p50_ms"] = [round(r[0]["p50_ms"], 4) for r in runs]
        row["how"] = row["how"].split("; timing: best of")[0] + (
            f"; timing: best of {rounds} interleaved rounds of all rows ({lat['iterations']} runs)"
        )


def run_example(
    example: str,
    quick: bool,
    only: list[str] | None,
    rounds: int,
    epochs: int | None = None,
    seed: int | None = None,
    extra: dict | None = None,
    base_ms: float | None = None,
) -> dict:
    out = RESULTS / f"compare_{example}.json"
    old = read_json(out) if out.is_file() and only is not None else {"rows": {}}
    b = setup(example, quick)
    b.epochs, b.seed, b.base_ms = epochs, seed, base_ms
    b.extra = extra or {}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = {**old, "example": example, "quick": quick, "machine": machine()}
    result.update(protocol={**old.get("protocol", {}), **protocol(quick)}, rows=dict(old["rows"]))
    result["measured_at"] = old.get("measured_at", now) if only == [] else now
    for name in ROWS:
        if (name not in only) if only is not None else (name in OPTIONAL):
            continue  # the QAT rows (OPTIONAL) are built only when named in --only
        print(f"== {example}: {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result["rows"][name] = BUILDERS[name](b, result["rows"])
        except Exception as e:  # one broken row must not lose the others
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            result["rows"][name] = {**{c: None for c in COLUMNS}, "how": f"FAILED: {msg}"}
        print(f"   done in {time.perf_counter() - t0:.0f} s", flush=True)
        result["verdict"] = verdict(result["rows"])
        write_json(out, result)
    if rounds > 0:
        retime(b, result["rows"], rounds)
        result["protocol"]["timing_rounds"] = rounds
        result["timed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result["verdict"] = verdict(result["rows"])
        write_json(out, result)
    result["verdict"] = verdict(result["rows"])
    write_json(out, result)
    print(markdown_table(result["rows"]))
    print(json.dumps(result["verdict"], indent=1))
    update_results_md(example, result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", choices=sorted(EXAMPLES), action="append")
    ap.add_argument("--quick", action="store_true", help="fewer timing runs, 2 distill epochs")
    ap.add_argument(
        "--only", nargs="*", choices=ROWS, help="rebuild these rows (none: re-time), keep others"
    )
    ap.add_argument("--rounds", type=int, help="final timing rounds (default 3, --quick 0)")
    ap.add_argument(
        "--epochs", type=int, help="distill epochs of the trained rows (default: the example's)"
    )
    ap.add_argument("--seed", type=int, help="seed of the trained rows (default: the example's)")
    ap.add_argument("--budget-config", type=json_object, help="merged into budget rows' config")
    ap.add_argument("--base-ms", type=float, help="one --example's p50 the budget rows divide")
    ap.add_argument(
        "--reuse-calibration",
        action="store_true",
        help="keep the host calibration of an earlier bench process (e.g. a quiet machine's)",
    )
    args = ap.parse_args()
    examples = args.example or ["digits", "sentiment"]
    for opt, value in (("--base-ms", args.base_ms), ("--budget-config", args.budget_config)):
        if value and len(examples) > 1:  # one example's p50, or its model's config
            ap.error(f"{opt} is for one example's budget rows: give one --example")
    rounds = args.rounds if args.rounds is not None else (0 if args.quick else 3)
    # a previous bench process's calibration (maybe from an older kdc, which the profile loader
    # refuses): this process calibrates afresh before its first budget row
    if not args.reuse_calibration:
        (SCRATCH / "kdc-config" / "calibration" / "host.yaml").unlink(missing_ok=True)
    for example in examples:
        a = args
        run_example(example, a.quick, a.only, rounds, a.epochs, a.seed, a.budget_config, a.base_ms)


if __name__ == "__main__":
    main()
