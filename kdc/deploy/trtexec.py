"""trtexec command lines (build and timing) and the statistics of its `--exportTimes` JSON."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np

from kdc.deploy.tensorrt import BuildOptions, plan_build
from kdc.errors import UserError

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
# device scripts run trtexec as "$TRTEXEC": from the environment, else PATH, else JetPack's
TRTEXEC_VAR = "$TRTEXEC"
TRTEXEC_LOOKUP = (
    'given="${TRTEXEC:-}"\n'
    f'TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo {JETPACK_TRTEXEC})}}"\n'
    'if ! command -v "$TRTEXEC" > /dev/null; then\n'
    '  if [ -n "$given" ]; then echo "TRTEXEC=$given: no such program" >&2\n'
    f'  else echo "trtexec not found (not on PATH, not at {JETPACK_TRTEXEC}): install '
    'TensorRT (JetPack) or run with TRTEXEC=/path/to/trtexec" >&2; fi\n'
    "  exit 127\n"
    "fi"
)
# BuilderFlag name -> trtexec switch.
FLAG_SWITCHES = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback"}
# NVIDIA's timing protocol: CUDA graphs, spin-wait sync, no host<->device copies in the timing.
WARMUP_MS = 500
# a timing whose per-iteration cv (std / mean) exceeds this is noisy: trtexec warns above 2.5 %
CV_LIMIT = 0.025
BENCH_PROTOCOL = (
    "--useCudaGraph",
    "--useSpinWait",
    "--noDataTransfers",
    f"--warmUp={WARMUP_MS}",
    "--avgRuns=500",
)


def shell_text(cmd: list[str], sep: str = " ") -> str:
    """A command as shell text: `$TRTEXEC` stays expandable, every other word is quoted."""
    return sep.join(f'"{w}"' if w == TRTEXEC_VAR else shlex.quote(w) for w in cmd)


def shape_spec(shapes: dict[str, list[int]]) -> str:
    """`name:1x128,other:1x3x224x224`; names holding ':' or ',' are single-quoted."""

    def name(n: str) -> str:
        return f"'{n}'" if ":" in n or "," in n else n

    return ",".join(f"{name(k)}:{'x'.join(str(d) for d in v)}" for k, v in shapes.items())


def build_command(
    onnx: Path | str,
    engine: Path | str,
    opts: BuildOptions,
    trt_version: str,
    *,
    trtexec: str = "trtexec",
) -> list[str]:
    """trtexec arguments that build `engine` from `onnx` as `build_engine` would.

    No `--stronglyTyped`: kdc builds weakly typed on 10.x, and trtexec 11.x builds strongly typed
    always (the flag is a deprecated no-op there). Shapes in `opts.profiles` are passed as given:
    leave out inputs whose dims are static."""
    plan = plan_build(trt_version, opts)
    cmd = [trtexec, f"--onnx={onnx}", f"--saveEngine={engine}"]
    cmd += [FLAG_SWITCHES[f] for f in plan.flags]
    if opts.profiles:
        for i, key in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            cmd.append(f"{key}={shape_spec({k: v[i] for k, v in opts.profiles.items()})}")
    cmd += [
        f"--memPoolSize=workspace:{opts.workspace_mb}M",
        f"--builderOptimizationLevel={opts.optimization_level}",
    ]
    if opts.timing_cache:
        cmd.append(f"--timingCacheFile={opts.timing_cache}")
    if plan.dla_core is not None:
        cmd.append(f"--useDLACore={plan.dla_core}")
    if plan.hardware_compatibility:
        cmd.append(f"--hardwareCompatibilityLevel={opts.hardware_compatibility}")
    return cmd


def bench_command(
    engine: Path | str,
    shapes: dict[str, list[int]],
    *,
    iterations: int = 1000,
    export_times: Path | str = "times.json",
    trtexec: str = "trtexec",
    dla_core: int | None = None,
) -> list[str]:
    """trtexec arguments that time a built engine and export per-iteration times (on the DLA
    core it was built for, `dla_core`, without CUDA graphs)."""
    cmd = [trtexec, f"--loadEngine={engine}"]
    if shapes:
        cmd.append(f"--shapes={shape_spec(shapes)}")
    if dla_core is not None:
        cmd.append(f"--useDLACore={dla_core}")
    protocol = bench_protocol(dla_core)
    return [*cmd, *protocol, f"--iterations={iterations}", f"--exportTimes={export_times}"]


def bench_protocol(dla_core: int | None = None) -> tuple[str, ...]:
    """BENCH_PROTOCOL, without CUDA graphs for an engine on a DLA core (their capture fails
    there: NVIDIA/TensorRT#3524)."""
    return tuple(f for f in BENCH_PROTOCOL if dla_core is None or f != "--useCudaGraph")


def latency_stats(times_ms: list[float] | np.ndarray) -> dict:
    """p50/p90/p99/mean (ms), coefficient of variation (population std / mean), count."""
    t = np.asarray(times_ms, dtype=np.float64)
    mean = float(t.mean())
    p50, p90, p99 = (float(v) for v in np.percentile(t, [50, 90, 99]))
    return {
        "p50_ms": round(p50, 4),
        "p90_ms": round(p90, 4),
        "p99_ms": round(p99, 4),
        "mean_ms": round(mean, 4),
        "cv": round(float(t.std()) / mean, 4) if mean else 0.0,
        "iterations": int(t.size),
    }


def parse_export_times(path: Path | str, metric: str = "latencyMs") -> dict:
    """Stats of one per-iteration field (`latencyMs`, `computeMs`) of a trtexec exportTimes file."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            "file not found",
            source=str(path),
            fix="run bench.sh on the device and copy results/ back",
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(
            f"not a trtexec exportTimes JSON ({e})",
            source=str(path),
            fix="run bench.sh again; do not edit the file",
        ) from None
    values = (
        [r[metric] for r in rows if isinstance(r, dict) and metric in r]
        if isinstance(rows, list)
        else []
    )
    if not values:
        raise UserError(
            f"no per-iteration '{metric}' values",
            source=str(path),
            fix="produce it with trtexec --exportTimes",
        )
    bad = [
        v
        for v in values
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf
    ]
    if bad:
        raise UserError(
            f"{len(bad)} of {len(values)} '{metric}' values are not positive finite times "
            f"(first: {json.dumps(bad[0])})",
            source=str(path),
            field=metric,
            fix="run bench.sh again; do not edit the file",
        )
    return latency_stats(values)
