"""Fit the `dla` block of the Jetson profiles with DLA cores (model roofline-v1+dla,
kdc.deploy.dla) to the published DLA timings in profiles/fitting/published.yaml.

    python bench/fit_dla.py            # fit, print published vs predicted
    python bench/fit_dla.py --write    # also write the `dla` block of the profiles

A DLA core's dense INT8 peak is a quarter of the sparse peak of both cores. Two factors are
fitted (compute efficiency and per-layer overhead) to two figures (ResNet-50 at MAXN and 15W
on AGX Orin), so they are reproduced exactly; nothing validates them independently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fit_profiles import BUILDERS, PUBLISHED  # noqa: E402

from kdc.deploy.arch_cost import analyze_architecture  # noqa: E402
from kdc.deploy.dla import predict_dla_ms  # noqa: E402
from kdc.deploy.kernels import materialize  # noqa: E402
from kdc.profiles import Dla, HardwareProfile, load_profile  # noqa: E402
from kdc.rundir import write_text  # noqa: E402

FIT_ON = "jetson-agx-orin-64gb"  # the device every published DLA figure was timed on


def dla_block(sparse_tops_2x: float, efficiency: float, overhead_us: float, gpu_us: float) -> Dla:
    int8 = sparse_tops_2x / 2 / 2  # dense, one core
    return Dla(
        int8_tops=int8,
        fp16_tflops=int8 / 2,
        compute_efficiency=efficiency,
        layer_overhead_us=overhead_us,
        transition_us=round(gpu_us + overhead_us, 3),
        source="",
    )


def fit(data: dict) -> tuple[float, float, list[dict]]:
    """(compute efficiency, layer overhead µs, rows) fitted on relative error."""
    base = load_profile(FIT_ON)
    gpu_us = base.latency_model.kernel_overhead_us
    rows = []
    for t in data["timings"]:
        arch = BUILDERS[t["model"]]()
        kernels = materialize(analyze_architecture(arch, batch=t["batch"]), t["precision"], "fp16")
        rows.append({**t, "kernels": kernels, "ms": t["batch"] / (t["images_per_s"] / 2) * 1e3})

    def predicted(row: dict, eff: float, over: float) -> float:
        block = dla_block(row["dla_sparse_tops_2x"], eff, over, gpu_us)
        prof = base.model_copy(update={"dla": block.model_copy(update={"source": "fit"})})
        return predict_dla_ms(row["kernels"], prof)["p50_ms"]

    res = least_squares(
        lambda p: [predicted(r, p[0], p[1]) / r["ms"] - 1 for r in rows],
        x0=[0.5, 5.0],
        bounds=([0.01, 0.0], [1.0, 1000.0]),
    )
    eff, over = round(float(res.x[0]), 4), round(float(res.x[1]), 3)
    for r in rows:
        r["predicted_ms"] = predicted(r, eff, over)
    return eff, over, rows


def blocks(data: dict, eff: float, over: float, n: int) -> dict[str, Dla]:
    out = {}
    for name, spec in data["profiles"].items():
        gpu_us = load_profile(name).latency_model.kernel_overhead_us
        block = dla_block(spec["dla_sparse_tops_2x"], eff, over, gpu_us)
        text = {k: " ".join(str(v).split()) for k, v in {**data, **spec}.items()}
        source = (
            f"roofline-v1+dla compute_efficiency and layer_overhead_us fitted by bench/fit_dla.py "
            f"to {n} published DLA timings on {FIT_ON} (reproduced exactly; no independent "
            f"check): {text['source']}. Peak: {text['dla_sparse_tops_2x']} sparse INT8 TOPs for "
            f"2 DLAs, {text['why']}; dense per core = a quarter. FP16: {text['fp16_why']}. "
            f"transition_us: {text['transition_why']}"
        )
        out[name] = block.model_copy(update={"source": source})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the profiles' dla blocks")
    args = ap.parse_args()
    data = yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))["dla"]
    eff, over, rows = fit(data)
    table = Table(title=f"DLA: published vs predicted (efficiency {eff:.4f}, {over:.2f} us/layer)")
    for col in ("power mode", "model", "precision", "batch", "published ms", "predicted ms"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["power_mode"],
            r["model"],
            r["precision"],
            str(r["batch"]),
            f"{r['ms']:.3f}",
            f"{r['predicted_ms']:.3f}",
        )
    Console(width=120).print(table)
    if args.write:
        for name, block in blocks(data, eff, over, len(rows)).items():
            path = ROOT / "profiles" / f"{name}.yaml"
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            doc["dla"] = block.model_dump(mode="json")
            HardwareProfile.model_validate(doc)
            write_text(path, yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True))


if __name__ == "__main__":
    main()
