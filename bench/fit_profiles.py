"""Refit the `latency_model` of the shipped hardware profiles to the published latencies in
profiles/fitting/published.yaml.

    python bench/fit_profiles.py            # fit, print a table, write profiles/fitting/fitted.json
    python bench/fit_profiles.py --write    # also update latency_model in profiles/*.yaml

Devices with a batch/sequence sweep are fitted alone (overhead, memory efficiency, fp16 and
int8 compute efficiency). Devices with one or two figures get the median efficiencies of those
fits pinned and only their kernel overhead fitted. Devices with none copy another's factors;
their `source` says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdc.deploy.arch_cost import analyze_architecture  # noqa: E402
from kdc.deploy.estimate import (  # noqa: E402
    EFFICIENCY_FIELD,
    fit_latency_model,
    predict_kernels_ms,
)
from kdc.deploy.kernels import launches, materialize  # noqa: E402
from kdc.profiles import HardwareProfile, load_profile  # noqa: E402
from kdc.rundir import write_json, write_text  # noqa: E402

PUBLISHED = ROOT / "profiles" / "fitting" / "published.yaml"
PINNED = {  # how a device without a sweep borrows each factor from the swept fits
    EFFICIENCY_FIELD["fp16"]: statistics.median,
    EFFICIENCY_FIELD["int8"]: statistics.median,
    # the large-L2 GPUs (A100 40 MB, L4 48 MB) fit 1.0; the 4-6 MB L2 parts take the lowest
    "memory_efficiency": min,
}


STEM = [
    {"op": "conv", "out": 64, "kernel": 7, "stride": 2},
    {"op": "maxpool", "kernel": 3, "stride": 2},
]


def _projection(out: int, stride: int) -> dict:
    """A residual stage's 1×1 shortcut convolution (beside the block, `branch`)."""
    return {"op": "conv", "out": out, "kernel": 1, "stride": stride, "padding": 0, "branch": True}


def resnet50() -> dict:
    """torchvision ResNet-50 (v1.5: stride on the 3×3) as a kdc cnn architecture."""
    layers = list(STEM)
    for mid, out, blocks, stride in [
        (64, 256, 3, 1),
        (128, 512, 4, 2),
        (256, 1024, 6, 2),
        (512, 2048, 3, 2),
    ]:
        for b in range(blocks):
            s = stride if b == 0 else 1
            if b == 0:
                layers.append(_projection(out, s))
            layers += [
                {"op": "conv", "out": mid, "kernel": 1, "padding": 0},
                {"op": "conv", "out": mid, "kernel": 3, "stride": s},
                {"op": "conv", "out": out, "kernel": 1, "padding": 0, "residual": True},
            ]
    layers += [{"op": "global_pool"}, {"op": "linear", "out": 1000}]
    return {"family": "cnn", "input_shape": [3, 224, 224], "layers": layers}


def resnet34_backbone() -> dict:
    """torchvision ResNet-34 without its pooling and classifier (a detector's backbone), at
    1280×768 as NVIDIA's DLA README times it."""
    layers = list(STEM)
    for out, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for b in range(blocks):
            s = stride if b == 0 else 1
            if s != 1:
                layers.append(_projection(out, s))
            layers += [
                {"op": "conv", "out": out, "kernel": 3, "stride": s},
                {"op": "conv", "out": out, "kernel": 3, "residual": True},
            ]
    return {"family": "cnn", "input_shape": [3, 768, 1280], "layers": layers}


BUILDERS = {"resnet50": resnet50, "resnet34_backbone": resnet34_backbone}


def device_profile(name: str, devices: dict) -> HardwareProfile:
    """The profile a timing's device is fitted through (a shipped one, or one with overrides)."""
    spec = devices.get(name)
    if spec is None:
        return load_profile(name)
    base = load_profile(spec["profile"])
    return base.model_copy(
        update={
            "name": name,
            "memory": base.memory.model_copy(update=spec.get("memory", {})),
            "compute": base.compute.model_copy(update=spec.get("compute", {})),
        }
    )


def samples_for(timings: list[dict], data: dict) -> list[tuple[list, float, dict]]:
    out = []
    for t in timings:
        spec = data["models"][t["model"]]
        arch = BUILDERS[spec["builder"]]() if "builder" in spec else spec
        shapes = {"input_ids": [t["batch"], t["seq"]]} if "seq" in t else None
        cost = analyze_architecture(arch, batch=t["batch"], input_shapes=shapes)
        out.append((materialize(cost, t["precision"], "fp16"), float(t["ms"]), t))
    return out


def fit_all(data: dict) -> tuple[dict[str, dict], dict[str, tuple]]:
    """Factors per shipped profile, with a `source` naming the figures they reproduce."""
    devices, fits, rows = data.get("devices", {}), {}, {}
    by_target: dict[str, list[dict]] = {}
    for t in data["timings"]:
        target = devices.get(t["device"], {}).get("profile", t["device"])
        by_target.setdefault(target, []).append(t)
    swept = {k: v for k, v in by_target.items() if len(v) >= data["min_sweep"]}
    for target, timings in swept.items():
        prof = device_profile(timings[0]["device"], devices)
        s = samples_for(timings, data)
        fits[target] = fit_latency_model(
            [(k, ms) for k, ms, _ in s], prof, fixed=data.get("fixed")
        )[0]
        rows[target] = (prof, s)
    pinned = {f: agg([fits[t][f] for t in swept]) for f, agg in PINNED.items()}
    for target, timings in by_target.items():
        if target in swept:
            continue
        prof = device_profile(timings[0]["device"], devices)
        s = samples_for(timings, data)
        fixed = {**pinned, **data.get("fixed", {})}
        if len(s) == 1:
            only = prof.model_copy(
                update={
                    "latency_model": prof.latency_model.model_copy(
                        update={**fixed, "kernel_overhead_us": 0.0}
                    )
                }
            )
            k, ms, _ = s[0]
            base = predict_kernels_ms(k, only)
            fit = {
                **only.latency_model.model_dump(),
                "kernel_overhead_us": round(float(max(ms - base, 0.0)) * 1e3 / launches(k), 3),
            }
        else:
            fit = fit_latency_model([(k, ms) for k, ms, _ in s], prof, fixed=fixed)[0]
        fits[target] = fit
        rows[target] = (prof, s)
        fits[target]["source"] = (
            f"efficiencies pinned to the {'/'.join(sorted(swept))} fits "
            "(compute: median, memory: lowest); kernel_overhead_us fitted"
        )
    for target, spec in data.get("copies", {}).items():
        fits[target] = {**fits[spec["from"]], **spec.get("override", {})}
    for target, fit in fits.items():
        fit["source"] = _source(target, fit, rows.get(target), data)
    return fits, rows


def _source(target: str, fit: dict, rows: tuple | None, data: dict) -> str:
    if rows is None:
        spec = data["copies"][target]
        return f"roofline-v1 factors copied from {spec['from']}: {spec['why']}"
    prof, samples = rows
    errs = [abs(predict_kernels_ms(k, prof, fit) / ms - 1) for k, ms, _ in samples]
    refs = "; ".join(sorted({data["sources"][t["source"]] for *_, t in samples}))
    how = fit["source"] if fit["source"].startswith("efficiencies") else "fitted"
    n = len(samples)
    err = (
        f"median |error| {statistics.median(errs):.0%}, max {max(errs):.0%}"
        if n > 1
        else "reproduced exactly"
    )
    return (
        f"roofline-v1 {how} by bench/fit_profiles.py to {n} published "
        f"latenc{'ies' if n > 1 else 'y'} in profiles/fitting/published.yaml ({err}): "
        f"{refs}. fp32 compute_efficiency is a prior, not fitted (no published fp32 figure)"
    )


def report(fits: dict, rows: dict) -> list[dict]:
    table = Table(title="published vs predicted (roofline-v1, fitted factors)")
    for col in (
        "profile",
        "model",
        "precision",
        "batch",
        "seq",
        "published ms",
        "predicted ms",
        "error",
    ):
        table.add_column(col)
    out = []
    for target, (prof, samples) in rows.items():
        for k, ms, t in samples:
            pred = predict_kernels_ms(k, prof, fits[target])
            out.append(
                {
                    "profile": target,
                    **{f: t.get(f) for f in ("device", "model", "precision", "batch", "seq")},
                    "published_ms": ms,
                    "predicted_ms": round(pred, 4),
                    "error": round(pred / ms - 1, 4),
                }
            )
            table.add_row(
                target,
                t["model"],
                t["precision"],
                str(t["batch"]),
                str(t.get("seq", "")),
                f"{ms:.3f}",
                f"{pred:.3f}",
                f"{pred / ms - 1:+.0%}",
            )
    Console(width=120).print(table)
    return out


HELD_OUT_MIN = 5
"""Fewest figures a held-out fit is made from."""


def held_out(data: dict) -> list[dict]:
    """For each fully fitted profile and each of its models: the factors fitted without that
    model's figures, and their errors on them (figures the fit never saw)."""
    devices, out = data.get("devices", {}), []
    by_target: dict[str, list[dict]] = {}
    for t in data["timings"]:
        by_target.setdefault(devices.get(t["device"], {}).get("profile", t["device"]), []).append(t)
    for target, timings in by_target.items():
        if len(timings) < data["min_sweep"]:
            continue
        prof = device_profile(timings[0]["device"], devices)
        samples = samples_for(timings, data)
        for model in sorted({t["model"] for t in timings}):
            seen = [(k, ms) for k, ms, t in samples if t["model"] != model]
            if len(seen) < HELD_OUT_MIN:
                continue
            fit = fit_latency_model(seen, prof, fixed=data.get("fixed"))[0]
            errs = [
                predict_kernels_ms(k, prof, fit) / ms - 1
                for k, ms, t in samples
                if t["model"] == model
            ]
            out.append(
                {
                    "profile": target,
                    "held_out": model,
                    "fitted_to": len(seen),
                    "figures": len(errs),
                    "median_abs_error": round(statistics.median(abs(e) for e in errs), 4),
                    "errors": [round(e, 4) for e in errs],
                }
            )
    table = Table(title="held out: fitted without a model's figures, errors on them")
    for col in ("profile", "held-out model", "fitted to", "figures", "median |error|", "range"):
        table.add_column(col)
    for r in out:
        table.add_row(
            r["profile"],
            r["held_out"],
            str(r["fitted_to"]),
            str(r["figures"]),
            f"{r['median_abs_error']:.0%}",
            f"{min(r['errors']):+.0%} to {max(r['errors']):+.0%}",
        )
    Console(width=120).print(table)
    return out


def write_profiles(fits: dict) -> None:
    for target, fit in fits.items():
        path = ROOT / "profiles" / f"{target}.yaml"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["latency_model"] = {
            k: fit[k]
            for k in (
                "kernel_overhead_us",
                "compute_efficiency",
                "memory_efficiency",
                "int8_compute_efficiency",
                "fp16_compute_efficiency",
                "source",
            )
            if k in fit
        }
        HardwareProfile.model_validate(doc)
        write_text(path, yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update profiles/*.yaml latency_model")
    args = ap.parse_args()
    data = yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))
    fits, rows = fit_all(data)
    table = report(fits, rows)
    checks = held_out(data)
    fitted = {"fits": fits, "timings": table, "held_out": checks}
    write_json(ROOT / "profiles" / "fitting" / "fitted.json", fitted)
    if args.write:
        write_profiles(fits)


if __name__ == "__main__":
    main()
