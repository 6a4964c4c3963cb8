"""How fast the latency model predicts for a BERT-base-sized graph (not a test).

    python bench/estimate_speed.py [--layers 12 --hidden 768 --seq 128 --repeat 200]

Exports a randomly initialised BERT classifier of `kdc.deploy.model_zoo` once (as kdc exports
students), then times: the first analysis of the ONNX file (load, shape inference, fusion),
cached predictions from the path and from an in-memory ModelProto, and predictions from the
architecture dict. Prints a table and writes bench/results/estimate_speed.json.
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

import onnx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from kdc.deploy import model_zoo  # noqa: E402
from kdc.deploy.estimate import predict_architecture, predict_onnx  # noqa: E402
from kdc.profiles import host_threads, load_profile  # noqa: E402
from kdc.rundir import write_json  # noqa: E402


def rate(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return repeat / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    profile = load_profile("nvidia-t4")
    shapes = {"input_ids": [1, args.seq], "attention_mask": [1, args.seq]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bert.onnx"
        # BERT's own vocabulary (the zoo's is smaller): the graph's size is part of the bench
        arch = {**model_zoo.transformer(args.layers, args.hidden, args.seq), "vocab_size": 30522}
        model_zoo.export(model_zoo.models([arch], ["fp32"])[0], path)
        size_mb = path.stat().st_size / 2**20
        start = time.perf_counter()
        first = predict_onnx(path, profile, precision="int8", input_shapes=shapes)
        cold_ms = (time.perf_counter() - start) * 1e3
        model = onnx.load(str(path), load_external_data=False)
        rows = {
            "first predict_onnx (load + shape inference + fusion), ms": cold_ms,
            "predict_onnx, cached, from path, per s": rate(
                lambda: predict_onnx(path, profile, precision="int8", input_shapes=shapes),
                args.repeat,
            ),
            "predict_onnx, cached, from ModelProto, per s": rate(
                lambda: predict_onnx(model, profile, precision="int8", input_shapes=shapes),
                args.repeat,
            ),
            "predict_architecture, per s": rate(
                lambda: predict_architecture(arch, profile, precision="int8", input_shapes=shapes),
                args.repeat,
            ),
        }
    arch_pred = predict_architecture(arch, profile, precision="int8", input_shapes=shapes)
    table = Table(
        title=f"estimate speed: BERT {args.layers}x{args.hidden}, seq {args.seq} "
        f"({first['kernels']} kernels, {size_mb:.0f} MB ONNX)"
    )
    table.add_column("measurement")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:,.1f}")
    Console().print(table)
    write_json(
        ROOT / "bench" / "results" / "estimate_speed.json",
        {
            "model": {
                "layers": args.layers,
                "hidden": args.hidden,
                "seq": args.seq,
                "kernels": first["kernels"],
                "onnx_mb": round(size_mb, 1),
            },
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "threads": host_threads(),
                "load_1min": os.getloadavg()[0],
            },
            "repeat": args.repeat,
            "measured": {k: round(v, 2) for k, v in rows.items()},
            "agreement": {
                "predict_onnx_ms": first["p50_ms"],
                "predict_architecture_ms": arch_pred["p50_ms"],
                "note": "predicted T4 int8 latencies, not timings",
            },
        },
    )


if __name__ == "__main__":
    main()
