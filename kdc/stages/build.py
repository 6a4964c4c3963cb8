"""Build stage: ONNX Runtime engines (FP32 optimised, INT8 QDQ) always; TensorRT where it is
installed, else a bundle that builds it on the device."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from kdc.deploy.onnxruntime import QUANT_OPS, activation_storage, weight_granularity
from kdc.deploy.softmax_floor import floor_file
from kdc.diskspace import engine_bytes_needed, require_free
from kdc.errors import UserError
from kdc.pipeline import Context, StageOutput
from kdc.preflight import (
    builds_int8,
    builds_tensorrt,
    int8_qat,
    qat_reduce_range,
    reduce_range_applies,
)
from kdc.rundir import (
    atomic_dir,
    atomic_path,
    files_of,
    read_json,
    size_mb,
    target_flag,
    write_json,
)
from kdc.stages.build_tensorrt import build_tensorrt, clear_previous_build, tensorrt_not_on_target
from kdc.upstream_reads import QAT_GRAPH


def _calibration(ctx: Context, rows: int, batch: int = 16) -> list[dict[str, np.ndarray]]:
    x = ctx.encode("train", rows)
    n = len(next(iter(x.values())))
    return [{k: v[s : s + batch] for k, v in x.items()} for s in range(0, n, batch)]


def reduce_range(ctx: Context) -> bool:
    """7-bit weights where the INT8 graph runs on this CPU's saturating int8 kernels (x86 without
    VNNI), unless quantize.reduce_range says otherwise (`reduce_range_applies`)."""
    return reduce_range_applies(ctx.cfg, ctx.profile)


def symmetric_activations(ctx: Context) -> bool:
    """S8S8 (symmetric) where a TensorRT engine is built from the INT8 graph (`for_tensorrt`);
    asymmetric U8S8 is more accurate on CPUs."""
    q = ctx.cfg.quantize.symmetric_activations
    return q if q is not None else for_tensorrt(ctx)


def for_tensorrt(ctx: Context) -> bool:
    """Whether the INT8 graph is quantized for TensorRT (`builds_tensorrt`): a TensorRT engine is
    built (or bundled) from it. Else it is for ONNX Runtime, a TensorRT target's too where
    build.engines leaves TensorRT out: the graph is quantized for the engine it is built for."""
    return builds_tensorrt(ctx.cfg, ctx.profile)


FALLBACK_ROWS = 256  # held-out training rows INT8 graphs are compared with FP32 on
PTQ_BACKENDS: dict[str, str] = {"onnxruntime": "ort-static-qdq", "nncf": "nncf-ptq-qdq"}


def build_onnxruntime(ctx: Context, src: Path) -> list[dict]:
    """The ONNX Runtime engines, written as the whole of build/onnxruntime (no graph an earlier
    build wrote, an INT8 one of another precision setting, stays)."""
    out_dir = ctx.run / "build" / "onnxruntime"
    with atomic_dir(out_dir) as tmp:
        engines = _onnxruntime_engines(ctx, src, tmp)
    return [{**e, "path": str((out_dir / e["path"]).relative_to(ctx.run.root))} for e in engines]


def _onnxruntime_engines(ctx: Context, src: Path, out_dir: Path) -> list[dict]:
    """The engine records of the graphs written into `out_dir`, paths relative to it."""
    from kdc.deploy.onnxruntime import optimize, optimizer_dims

    arch = read_json(ctx.run / "distill" / "student.json")["architecture"]  # pruning changes it
    num_heads, hidden_size = optimizer_dims(arch)
    fam = ctx.teacher.family
    floor = ctx.cfg.build.softmax_floor
    fp32 = optimize(
        src,
        out_dir / "model_fp32.onnx",
        family=fam,
        num_heads=num_heads,
        hidden_size=hidden_size,
        # ORT's fused Attention pays the padding cost the floor removes (an FP32 student, 91
        # tokens + 165 padding: fused 26.3 ms, unfused and floored 23.4; unpadded 22.9 / 23.7)
        fuse_masked_attention=not floor,
    )
    floored = floor_file(fp32) if floor else 0
    engines = [
        {
            "engine": "onnxruntime",
            "provider": "CPUExecutionProvider",
            "precision": "fp32",
            "path": fp32.name,
            "size_mb": size_mb(fp32),
            "status": "built",
            "optimization": "ORT_ENABLE_ALL + transformer fusion"
            + (f" (attention unfused) + {_floor_note(floored)}" if floored else "")
            if fam == "transformer"
            else "ORT_ENABLE_EXTENDED (offline)",
        }
    ]
    if not builds_int8(ctx.cfg):
        return engines
    dst = out_dir / "model_int8.onnx"
    qat = qat_graph(ctx)
    if qat:
        with atomic_path(dst) as tmp:
            shutil.copyfile(qat, tmp)
        how = _qat_how(ctx)
    else:
        how = _ptq(ctx, src, dst)
    # of the graph shipped, by QAT or PTQ
    shipped = onnx.load(str(dst), load_external_data=False)  # read once for both records
    how["weights"] = weight_granularity(shipped)
    how["activations"] = activation_storage(shipped, symmetric_activations(ctx))
    # unless a TensorRT engine is built from this graph (`for_tensorrt`, as its quantization
    # scheme: it fuses its attention itself); one named in build.engines on a target without
    # TensorRT is not, and the graph ships as ONNX Runtime
    floored = floor_file(dst) if floor and not for_tensorrt(ctx) else 0
    engines.append(
        {
            "engine": "onnxruntime",
            "provider": "CPUExecutionProvider",
            "precision": "int8",
            "path": dst.name,
            "size_mb": size_mb(dst),
            "status": "built",
            "quantization": how,
            **({"optimization": _floor_note(floored)} if floored else {}),
        }
    )
    return engines


def qat_graph(ctx: Context) -> Path | None:
    """Distill's QAT graph, the INT8 engine of a run that trains quantization-aware (`int8_qat`);
    None for any other run. QAT always writes it (or fails), so one missing (removed, or a distill
    stage that did not write it) is refused: build would ship a PTQ engine as the QAT run's. A
    distill whose record lacks it is not done (`required_outputs`): `--resume` runs it again."""
    if not int8_qat(ctx.cfg):
        return None
    path = ctx.run / "distill" / QAT_GRAPH
    if path.is_file():
        return path
    tgt, run = target_flag(ctx.run.manifest()), ctx.run.root
    raise UserError(
        "quantize.method qat's INT8 graph is missing (removed, or distill did not write it), and "
        "build will not ship a PTQ engine for a QAT run",
        source=str(path),
        fix=f"`kdc compress CONFIG{tgt} --out {run} --resume` (it runs distill again)",
    )


def _floor_note(count: int) -> str:
    return f"masked-softmax floor on {count} attention softmax{'es' if count > 1 else ''}"


def _qat_how(ctx: Context) -> dict:
    """How distillation's quantization-aware training made the INT8 graph."""
    from kdc.compress.qat import SCHEMES

    how = {
        "method": "qat",
        "scheme": SCHEMES[ctx.teacher.family].how,
        "epochs": ctx.cfg.quantize.qat_epochs,
    }
    if qat_reduce_range(ctx.cfg, ctx.profile):  # trained at 7 bits, as distill decided it
        how["reduce_range"] = True
    return how


def _quantizer(ctx: Context, src: Path, backend: str) -> Callable[[list[str], Path], Path]:
    """`quantize(nodes_to_exclude, path)` for a PTQ backend, calibrated on training rows."""
    from kdc.compress.nncf_ptq import quantize_int8_nncf
    from kdc.deploy.onnxruntime import quantize_int8

    q, fam = ctx.cfg.quantize, ctx.teacher.family
    sym, seven_bit, trt = symmetric_activations(ctx), reduce_range(ctx), for_tensorrt(ctx)
    calibration = _calibration(ctx, q.calibration_size)
    if backend == "nncf":
        return lambda exclude, path: quantize_int8_nncf(
            src,
            path,
            calibration,
            symmetric_activations=sym,
            op_types=QUANT_OPS.get(fam),
            nodes_to_exclude=exclude,
            reduce_range=seven_bit,
            tensorrt=trt,
        )
    return lambda exclude, path: quantize_int8(
        src,
        path,
        calibration,
        symmetric_activations=sym,
        method=q.calibration,
        op_types=QUANT_OPS.get(fam),
        nodes_to_exclude=exclude,
        float_bias=trt,
        reduce_range=seven_bit,
        unsigned=not trt,
    )


def tensorrt_on_target(ctx: Context) -> bool:
    return "tensorrt" in ctx.profile.runtime.engines


def wanted_engines(ctx: Context) -> list[str]:
    """`build.engines`, by default ONNX Runtime plus TensorRT where the target runs it."""
    return ctx.cfg.build.engines or ["onnxruntime", *(["tensorrt"] * tensorrt_on_target(ctx))]


def int8_runs_here(ctx: Context) -> bool:
    """Whether the INT8 graph ships as ONNX Runtime on this machine's CPU (a target kdc can time,
    no TensorRT engine). If not, INT8 graphs are compared with Q/DQ executed in float, the exact
    int8 arithmetic TensorRT approximates, not through this CPU's int8 kernels, which saturate on
    S8S8 without VNNI and would rank the graphs by this machine's arithmetic."""
    from kdc.preflight import int8_runs_here as runs_here

    return runs_here(ctx.cfg, ctx.profile)


def _output_loss_fn(
    ctx: Context, src: Path
) -> tuple[Callable[[Path], tuple[float, float]], str, dict[str, np.ndarray]]:
    """How far a quantized graph's outputs are from `src`'s on held-out training rows (those after
    the calibration rows, never the eval split) as (`output_loss`, `output_deviation`), a
    description of those rows, and the rows; run through this CPU's int8 kernels only where the
    graph will run on them (`int8_runs_here`)."""
    from kdc.compress.int8_fallback import output_deviation, output_loss
    from kdc.deploy.onnxruntime import make_session, run_session

    q = ctx.cfg.quantize
    n = len(ctx.dataset.train)
    start = q.calibration_size if n - q.calibration_size >= 64 else 0
    rows = {k: v[start:] for k, v in ctx.encode("train", start + FALLBACK_ROWS).items()}
    # all cores, twice as fast on two as one thread; the outputs were bitwise those of one
    # thread on the sentiment student (FP32 and INT8: ONNX Runtime's CPU kernels split rows and
    # columns across threads, not sums), so the choice should not depend on the core count
    ref = run_session(make_session(src), rows)
    optimization = "all" if int8_runs_here(ctx) else "disable"

    def compare(path: Path) -> tuple[float, float]:
        out = run_session(make_session(path, optimization=optimization), rows)
        return output_loss(ctx.cfg.task, ref, out), output_deviation(ref, out)

    overlap = "; the calibration rows too: too few to hold any out" if start == 0 else ""
    where = f"train rows {start}..{start + len(ref) - 1} (never the eval split{overlap})"
    return compare, where, rows


SLOWER_OK = 1.1  # an INT8 graph this much slower than the fastest one is not a candidate
PTQ_ROUNDS = 3  # interleaved timing rounds of `ptq: auto`'s INT8 graphs


def _spread(timed: dict) -> float:
    """How far a p50 moved between timing rounds, relative to the kept (median) one."""
    rounds = timed["rounds_p50_ms"]
    return (max(rounds) - min(rounds)) / timed["p50_ms"]


def _choose_backend(
    ctx: Context,
    built: dict[str, Path],
    losses: dict[str, float],
    deviations: dict[str, float],
    rows: dict,
    tie: float,
) -> tuple[str, dict]:
    """The backend whose INT8 graph is closest to FP32: the lowest loss, and among graphs within
    `tie` of it (one row's share for a class-change loss, which is often 0 for both on a CNN) the
    lowest output deviation, whatever the backends' order; where it runs on this CPU
    (`int8_runs_here`), only among those at most 10 % slower than the fastest, or within how far
    their p50s moved between timing rounds. Which graph is faster depends on the graph and the
    machine: NNCF's ModelType.TRANSFORMER graph of a BERT student ran 1.7-1.9x slower than ONNX
    Runtime's (bench/RESULTS.md); kdc's NNCF graph of the sentiment example's student 0.87-0.91x
    on the VNNI Xeon; a 13 us CNN's two graphs differ by less than a single round's noise, which
    must not decide."""
    from kdc.deploy.latency import measure_onnx_rounds

    choice: dict = {
        "loss": {b: round(v, 5) for b, v in losses.items()},
        "deviation": {b: float(f"{v:.4g}") for b, v in deviations.items()},
    }
    ok, timing = list(built), ""
    if int8_runs_here(ctx):
        timed = measure_onnx_rounds(
            {b: (path, "int8") for b, path in built.items()},
            rows,
            rounds=PTQ_ROUNDS,
            threads=ctx.cfg.verify.threads,
            warmup=5,
            iterations=20,
            min_duration_s=0.1,
        )
        fast = min(timed.values(), key=lambda t: t["p50_ms"])
        ok = [
            b
            for b, t in timed.items()
            if t["p50_ms"] / fast["p50_ms"] - 1 <= max(SLOWER_OK - 1, _spread(t) + _spread(fast))
        ]
        # measured latency objects: device, engine, precision, batch, threads as timed (the
        # config may leave them to all CPUs), percentiles, each round's p50 and p99
        choice["latency"] = timed
        timing = (
            f" among the INT8 graphs at most {SLOWER_OK:g}x the fastest here (or within the "
            f"spread of its p50 over {PTQ_ROUNDS} interleaved rounds)"
        )
    near_tie = f"within {tie:g} of it (one row)" if tie else "with the same loss"
    choice["rule"] = (
        f"closest to FP32{timing}: the lowest loss; among graphs {near_tie}, the lowest "
        "deviation, RMS(INT8 - FP32 outputs) / RMS(FP32 outputs) on the same rows"
    )
    lowest = min(losses[b] for b in ok)
    near = [b for b in ok if losses[b] - lowest <= tie + 1e-12]
    return min(near, key=lambda b: (deviations[b], losses[b])), choice


def _ptq(ctx: Context, src: Path, dst: Path) -> dict:
    """Post-training INT8 by the configured backend (`auto`: ONNX Runtime's and NNCF's, the one
    closer to FP32 on held-out training rows kept, see `_choose_backend`), accuracy-aware when
    `max_int8_loss` is set."""
    import tempfile

    from kdc.compress.int8_fallback import keep_sensitive_layers, layer_groups

    q, fam = ctx.cfg.quantize, ctx.teacher.family
    backends = list(PTQ_BACKENDS) if q.ptq == "auto" else [q.ptq]
    how: dict = {"calibration_rows": min(q.calibration_size, len(ctx.dataset.train))}
    if reduce_range(ctx):  # 7-bit weights: x86 int8 kernels without VNNI saturate on 8
        how["reduce_range"] = True
    if len(backends) == 1 and q.max_int8_loss is None:
        _quantizer(ctx, src, backends[0])([], dst)
        return {"method": PTQ_BACKENDS[backends[0]], **how, **_backend_notes(ctx, backends[0])}
    compare, described, held_out = _output_loss_fn(ctx, src)
    quantizers = {b: _quantizer(ctx, src, b) for b in backends}
    with tempfile.TemporaryDirectory(prefix="kdc-int8-") as scratch:
        built = {b: quantize([], Path(scratch) / f"{b}.onnx") for b, quantize in quantizers.items()}
        measured = {b: compare(p) for b, p in built.items()}
        losses = {b: loss for b, (loss, _) in measured.items()}
        if len(backends) > 1:
            n = len(next(iter(held_out.values())))
            tie = 0.0 if ctx.cfg.task == "sentence-embedding" else 1 / n  # one row's class
            deviations = {b: dev for b, (_, dev) in measured.items()}
            backend, how["backend_choice"] = _choose_backend(
                ctx, built, losses, deviations, held_out, tie
            )
        else:
            backend = backends[0]
        best = built[backend]
        if q.max_int8_loss is not None:
            best, how["accuracy_aware"] = keep_sensitive_layers(
                best,
                losses[backend],
                quantizers[backend],
                lambda path: compare(path)[0],
                layer_groups(src, QUANT_OPS.get(fam)),
                q.max_int8_loss,
                Path(scratch),
                q.fallback_max_layers,
            )
            kept = how["accuracy_aware"]["kept_float"]
            if kept:
                ctx.log(f"  int8: kept in float {kept} ({how['accuracy_aware']['final_loss']})")
        with atomic_path(dst) as tmp:
            shutil.copyfile(best, tmp)
    how["loss"] = {
        "rows": described,
        "run_by": "ONNX Runtime's int8 CPU kernels (this machine is the target)"
        if int8_runs_here(ctx)
        else "ONNX Runtime with Q/DQ in float (graph optimisations off), not this CPU's int8 "
        "kernels: the graph runs elsewhere",
        "measure": "1 - mean cosine to FP32"
        if ctx.cfg.task == "sentence-embedding"
        else "share of rows whose class differs from FP32",
    }
    return {"method": PTQ_BACKENDS[backend], **how, **_backend_notes(ctx, backend)}


def _backend_notes(ctx: Context, backend: str) -> dict:
    ops = QUANT_OPS.get(ctx.teacher.family) or "default"
    if backend == "nncf":
        return {"preset": "performance" if symmetric_activations(ctx) else "mixed", "ops": ops}
    return {"calibration": ctx.cfg.quantize.calibration, "ops": ops}


def run(ctx: Context) -> StageOutput:
    src = ctx.run / "export" / "model.onnx"
    require_free(ctx.run / "build", engine_bytes_needed(src), "building engines")
    clear_previous_build(ctx)
    engines: list[dict] = []
    wanted = wanted_engines(ctx)
    if "onnxruntime" in wanted:
        engines += build_onnxruntime(ctx, src)
    if "tensorrt" in wanted:
        if tensorrt_on_target(ctx):
            engines.append(build_tensorrt(ctx, engines))
        else:  # named in build.engines
            engines.append(tensorrt_not_on_target(ctx, engines))
    out = write_json(ctx.run / "build" / "engines.json", engines)
    # a bundle is a directory: each of its files is recorded, so resume and `kdc inspect` see
    # an edited build.sh or model as they see an edited engine
    files = [f for e in engines if e.get("path") for f in files_of(ctx.run / e["path"])]
    for e in engines:
        ctx.log(
            f"  {e['engine']} {e['precision']}: {e['status']}"
            + (f" ({e['size_mb']} MB)" if "size_mb" in e else "")
        )
    return StageOutput([*files, out], {"engines": len(engines)})
