"""Wall time and peak memory of each stage of `kdc compress`, on the shipped examples.

    python bench/pipeline.py [--example digits|sentiment] [--threads 1]

Each stage runs as its own `kdc <stage> CONFIG --target host --out DIR` process (`kdc verify
RUN` for verify + report), so every stage's peak RSS is its own process's high-water mark
(VmHWM), not this script's. A stage's figures therefore include the
start-up a user pays when running stages one by one (Python + torch import, loading the teacher,
reading and encoding the data); `in_process_wall_s` is the stage's own time as the run manifest
records it. Writes bench/results/pipeline.json (rows keyed by example); other bench scripts
(bench/compare.py) reuse `run_kdc` to produce their kdc rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from kdc.profiles import cpu_info  # noqa: E402
from kdc.rundir import read_json, write_json, write_text  # noqa: E402

EXAMPLES = {
    "digits": ROOT / "examples" / "digits" / "model.yaml",
    "sentiment": ROOT / "examples" / "sentiment" / "model.yaml",
}
STAGES = ("search", "distill", "export", "build", "verify")
SCRATCH = Path(os.environ.get("KDC_BENCH_SCRATCH", "/tmp/kdc-bench"))
RESULTS = ROOT / "bench" / "results"
# exit codes a finished run may end with: 0 all constraints passed, 1 a constraint failed
FINISHED = (0, 1)


def stage_env(threads: int) -> dict[str, str]:
    """The environment of every kdc process: torch/OpenMP threads pinned, telemetry off."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        ORT_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


# Runs `python -m kdc ARGS` and, however it exits, writes the process's own peak RSS (VmHWM,
# kB) to $KDC_BENCH_HWM. Not ru_maxrss: Linux carries that across fork + exec, so a stage started
# by a large parent (bench/compare.py, with torch loaded) would report the parent's peak.
_WRAP = r"""
import os, runpy, sys
sys.argv = ["kdc", *sys.argv[1:]]
try:
    runpy.run_module("kdc", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as fh:
        kb = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM:"))
    with open(os.environ["KDC_BENCH_HWM"], "w") as fh:
        fh.write(str(kb))
"""


def run_process(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `cmd` (kdc CLI arguments), its output appended to `log`; wall time, its own peak RSS
    and exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    hwm = log.parent / f"{log.stem}.hwm"
    env = {**env, "KDC_BENCH_HWM": str(hwm)}
    with open(log, "a") as fh:
        fh.write(f"$ kdc {' '.join(cmd)}\n")
        cmd = [sys.executable, "-c", _WRAP, *cmd]
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        proc.wait()
        wall = time.perf_counter() - t0
    peak = int(hwm.read_text()) / 1024 if hwm.is_file() else None
    hwm.unlink(missing_ok=True)
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak, 1) if peak is not None else None,
        "exit_code": proc.returncode,
    }


_CALIBRATION: dict = {}


def calibrate_host(threads: int, train_threads: int) -> dict:
    """`kdc calibrate --target host --threads THREADS` once per bench process (into
    $KDC_CONFIG_DIR), before the first kdc budget row, as the search log advises before searching
    under a latency budget; a calibration already there is kept (compare.py
    --reuse-calibration)."""
    saved = Path(os.environ["KDC_CONFIG_DIR"]) / "calibration" / "host.yaml"
    if not _CALIBRATION and saved.is_file():
        _CALIBRATION.update(reused=str(saved), config_dir=os.environ["KDC_CONFIG_DIR"])
    if not _CALIBRATION:
        log = SCRATCH / "calibrate.log"
        cmd = ["calibrate", "--target", "host", "--threads", str(threads)]
        rec = run_process(cmd, stage_env(train_threads), log)
        if rec["exit_code"] != 0:
            raise RuntimeError(f"kdc calibrate failed, see {log}")
        _CALIBRATION.update(rec, config_dir=os.environ["KDC_CONFIG_DIR"])
    return _CALIBRATION


def json_object(text: str) -> dict:
    """A command-line argument that must be a JSON object (argparse's `type`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object ({{...}}): {text!r}")
    return value


def write_config(base: Path, changes: dict, path: Path) -> Path:
    """A copy of the config at `base` with `changes` merged in (one level deep per section; None
    removes a section) and its relative paths made absolute, so it can live in a scratch
    directory."""
    data = yaml.safe_load(base.read_text())
    for section, value in changes.items():
        if value is None:
            data.pop(section, None)
        elif isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    for section, key in (("teacher", "path"), ("teacher", "weights"), ("data", "source")):
        rel = data.get(section, {}).get(key)
        if rel and (base.parent / rel).exists():
            data[section][key] = str((base.parent / rel).resolve())
    if data.get("data", {}).get("eval"):
        data["data"]["eval"] = str((base.parent / data["data"]["eval"]).resolve())
    write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def run_kdc(config: Path, out: Path, *, threads: int = 1, target: str = "host") -> dict:
    """`kdc compress` one stage per process; per-stage wall/peak RSS and the run's totals.
    `failed` names the stage that stopped the run (its exit code and log tail with it)."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    env, log = stage_env(threads), out.parent / f"{out.name}.log"
    if log.exists():
        log.unlink()
    stages: dict[str, dict] = {}
    failed = None
    for stage in STAGES:
        if stage == "verify":
            cmd = ["verify", str(out), "--target", target, "-q"]
        else:
            cmd = [stage, str(config), "--target", target, "--out", str(out), "-q"]
        rec = run_process(cmd, env, log)
        stages[stage] = rec
        if rec["exit_code"] not in FINISHED or (rec["exit_code"] != 0 and stage != "verify"):
            tail = log.read_text().strip().splitlines()[-3:]
            failed = {"stage": stage, "exit_code": rec["exit_code"], "log_tail": tail}
            break
    manifest = read_json(out / "manifest.json") if (out / "manifest.json").is_file() else {}
    for name, rec in manifest.get("stages", {}).items():
        key = "verify" if name == "report" else name
        if key in stages and "wall_s" in rec:
            prev = stages[key].get("in_process_wall_s", 0.0)
            stages[key]["in_process_wall_s"] = round(prev + rec["wall_s"], 2)
    return {
        "config": str(config),
        "run_dir": str(out),
        "log": str(log),
        "threads": threads,
        "stages": stages,
        "wall_s": round(sum(s["wall_s"] for s in stages.values()), 2),
        "peak_rss_mb": max((s["peak_rss_mb"] or 0) for s in stages.values()),
        "failed": failed,
    }


def from_run(run_dir: Path) -> dict:
    """A finished `kdc compress` run's own stage records (manifest): in-process wall times only;
    peak RSS was not measured per stage there."""
    m = read_json(run_dir / "manifest.json")
    stages = {}
    for name, rec in m.get("stages", {}).items():
        key = "verify" if name == "report" else name
        prev = stages.get(key, {}).get("in_process_wall_s", 0.0)
        stages[key] = {
            "wall_s": None,
            "peak_rss_mb": None,
            "exit_code": 0 if rec.get("status") == "done" else None,
            "status": rec.get("status"),
            "in_process_wall_s": round(prev + rec.get("wall_s", 0.0), 2),
        }
    return {
        "config": m.get("config_file"),
        "run_dir": str(run_dir),
        "threads": "torch default (all cores)",
        "stages": stages,
        "wall_s": m.get("wall_s"),
        "peak_rss_mb": None,
        "failed": None,
    }


def machine() -> dict:
    return {
        "cpu": cpu_info()[0],
        "usable_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
    }


def _cell(rec: dict) -> str:
    wall = rec.get("wall_s") or rec.get("in_process_wall_s")
    rss = rec.get("peak_rss_mb")
    return f"{wall:.1f} / {rss:.0f}" if rss else (f"{wall:.1f} / –" if wall else "–")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", choices=sorted(EXAMPLES), action="append")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of each stage")
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    ap.add_argument(
        "--from-run",
        type=Path,
        help="record this finished `kdc compress` run of --example (manifest times, no RSS)",
    )
    ap.add_argument("--run-peak-rss-mb", type=float, help="with --from-run: its measured peak RSS")
    ap.add_argument("--run-note", default="", help="with --from-run: how it was run")
    args = ap.parse_args()
    out_path = args.out
    result = read_json(out_path) if out_path.is_file() else {"rows": {}}
    for name in args.example or sorted(EXAMPLES):
        if args.from_run:
            rec = from_run(args.from_run)
            rec["how"] = (
                f"`kdc compress examples/{name}/model.yaml --target host` run in one process "
                f"({args.from_run}); stage times from its manifest (in-process), total = the "
                "manifest's wall_s; per-stage peak RSS not measured in this mode" + args.run_note
            )
            rec["peak_rss_mb"] = args.run_peak_rss_mb
        else:
            rec = run_kdc(EXAMPLES[name], SCRATCH / f"pipeline-{name}", threads=args.threads)
            rec["how"] = (
                f"examples/{name}/model.yaml unchanged, --target host; one process per stage "
                f"(torch/OMP threads {args.threads}); peak RSS = VmHWM of that stage's process"
            )
        result["rows"][name] = rec
        result["machine"] = machine()
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(out_path, result)
    table = Table(title="kdc compress, per stage (wall s / peak RSS MB)")
    table.add_column("example")
    for s in (*STAGES, "total"):
        table.add_column(s, justify="right")
    for name, rec in result["rows"].items():
        cells = [_cell(rec["stages"].get(s) or {}) for s in STAGES]
        table.add_row(name, *cells, _cell(rec))
    Console().print(table)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
