"""Fit the `dla` block of the Jetson profiles with DLA cores (model roofline-v1+dla,
kdc.deploy.dla) to the published DLA timings in profiles/fitting/published.yaml.

    python bench/fit_dla.py            # fit, print published vs predicted
    python bench/fit_dla.py --write    # also write the `dla` block of the profiles

A DLA core's dense INT8 peak is a quarter of the sparse peak of both cores. Two factors are
fitted on relative error: the compute efficiency and the per-layer overhead, taken as a fixed
number of DLA clock cycles (so, in µs, inversely proportional to the power mode's DLA peak:
`OVERHEAD_AT` sparse TOPs is the reference). The held-out check fits the same two factors to the
ResNet-50 figures alone and predicts the others (a ResNet-34 backbone), which that fit never saw.
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
OVERHEAD_AT = 105.0  # sparse TOPs of both DLAs (AGX Orin, MAXN) the fitted overhead is quoted at
HELD_OUT_FIT = "resnet50"  # the model the held-out check fits to


def dla_block(sparse_tops_2x: float, efficiency: float, overhead_us: float, gpu_us: float) -> Dla:
    """One core's block at a power mode of `sparse_tops_2x`; `overhead_us` at OVERHEAD_AT."""
    int8 = sparse_tops_2x / 2 / 2  # dense, one core
    layer_us = overhead_us * OVERHEAD_AT / sparse_tops_2x  # fixed cycles per layer
    return Dla(
        int8_tops=int8,
        fp16_tflops=int8 / 2,
        compute_efficiency=efficiency,
        layer_overhead_us=layer_us,
        transition_us=gpu_us + layer_us,
        source="fit",
    )


def timed_rows(data: dict) -> list[dict]:
    """The published timings with their kernel lists and one DLA's milliseconds per call."""
    rows = []
    for t in data["timings"]:
        arch = BUILDERS[t["model"]]()
        kernels = materialize(analyze_architecture(arch, batch=t["batch"]), t["precision"], "fp16")
        rows.append({**t, "kernels": kernels, "ms": t["batch"] / (t["images_per_s"] / 2) * 1e3})
    return rows


def predicted(row: dict, eff: float, over: float) -> float:
    base = load_profile(FIT_ON)
    block = dla_block(row["dla_sparse_tops_2x"], eff, over, base.latency_model.kernel_overhead_us)
    return predict_dla_ms(row["kernels"], base.model_copy(update={"dla": block}))["p50_ms"]


def fit(rows: list[dict]) -> tuple[float, float]:
    """(compute efficiency, layer overhead µs at OVERHEAD_AT) on relative error."""
    res = least_squares(
        lambda p: [predicted(r, p[0], p[1]) / r["ms"] - 1 for r in rows],
        x0=[0.5, 5.0],
        bounds=([0.01, 0.0], [1.0, 1000.0]),
    )
    return round(float(res.x[0]), 4), round(float(res.x[1]), 3)


def errors(rows: list[dict], eff: float, over: float) -> list[float]:
    return [predicted(r, eff, over) / r["ms"] - 1 for r in rows]


def blocks(data: dict, eff: float, over: float, check: str) -> dict[str, Dla]:
    n = len(data["timings"])
    out = {}
    for name, spec in data["profiles"].items():
        gpu_us = load_profile(name).latency_model.kernel_overhead_us
        block = dla_block(spec["dla_sparse_tops_2x"], eff, over, gpu_us)
        text = {k: " ".join(str(v).split()) for k, v in {**data, **spec}.items()}
        source = (
            f"roofline-v1+dla compute_efficiency and layer_overhead_us (fixed DLA cycles: "
            f"{over:g} us at {OVERHEAD_AT:g} sparse TOPs, scaled by the power mode's peak) "
            f"fitted by bench/fit_dla.py to {n} published DLA timings on {FIT_ON} "
            f"({check}): {text['source']}. Peak: {text['dla_sparse_tops_2x']} sparse INT8 TOPs "
            f"for 2 DLAs, {text['why']}; dense per core = a quarter. FP16: {text['fp16_why']}. "
            f"transition_us: {text['transition_why']}"
        )
        rounded = {k: round(getattr(block, k), 3) for k in ("layer_overhead_us", "transition_us")}
        out[name] = block.model_copy(update={**rounded, "source": source})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the profiles' dla blocks")
    args = ap.parse_args()
    data = yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))["dla"]
    rows = timed_rows(data)
    eff, over = fit(rows)
    fitted = errors(rows, eff, over)
    held_in = [r for r in rows if r["model"] == HELD_OUT_FIT]
    held_out = [r for r in rows if r["model"] != HELD_OUT_FIT]
    h_eff, h_over = fit(held_in)
    checked = errors(held_out, h_eff, h_over)
    title = (
        f"DLA: published vs predicted (all figures: efficiency {eff:.4f}, {over:.2f} us/layer "
        f"at {OVERHEAD_AT:g} sparse TOPs; held out: fitted to {HELD_OUT_FIT} alone, "
        f"{h_eff:.4f}, {h_over:.2f} us)"
    )
    table = Table(title=title)
    for col in ("power mode", "model", "batch", "published ms", "fit ms", "error", "held out"):
        table.add_column(col)
    for r, e in zip(rows, fitted, strict=True):
        h = predicted(r, h_eff, h_over) / r["ms"] - 1
        table.add_row(
            r["power_mode"],
            r["model"],
            str(r["batch"]),
            f"{r['ms']:.3f}",
            f"{r['ms'] * (1 + e):.3f}",
            f"{e:+.1%}",
            f"{h:+.1%}" + (" (fitted)" if r["model"] == HELD_OUT_FIT else ""),
        )
    Console(width=140).print(table)
    check = (
        f"errors {min(fitted):+.0%} to {max(fitted):+.0%}; held-out check: fitted to the "
        f"{HELD_OUT_FIT} figures alone, it predicts the {len(held_out)} others within "
        f"{min(checked):+.0%} to {max(checked):+.0%}"
    )
    print(check)
    if args.write:
        for name, block in blocks(data, eff, over, check).items():
            path = ROOT / "profiles" / f"{name}.yaml"
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            doc["dla"] = block.model_dump(mode="json")
            HardwareProfile.model_validate(doc)
            write_text(path, yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True))


if __name__ == "__main__":
    main()
