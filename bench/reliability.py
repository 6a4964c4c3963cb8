"""Crash safety and malformed inputs (not a test):

    python bench/reliability.py [--kills-per-stage 2] [--ctrl-c-per-stage 1] [--seed 0]
                                [--generated 160] [--no-kills]

1. Two uninterrupted `kdc compress` runs of the tiny CNN project (tests/helpers/tiny.py) in
   subprocesses: the reference, and a determinism check.
2. For every stage, `--kills-per-stage` runs SIGKILLed a random delay (up to 90 % of that
   stage's wall time in the second, warm run) after the manifest shows the stage running (the
   stage it actually hit is recorded: a short stage may be over first); what the kill left is
   checked (stages marked done intact, temporary files), then `kdc compress --resume` must exit
   0, keep the stages finished before the kill, and reproduce the reference exactly (same
   student architecture and accuracies: every run has one intra-op thread). The same with
   `--ctrl-c-per-stage` SIGINTs (Ctrl-C), whose runs must also exit 130.
3. Malformed inputs: tests/test_malformed_inputs.py's explicit cases and `--generated` configs
   from its hypothesis strategy, in-process through the CLI; the exit code and line of each.

Writes bench/results/reliability.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "helpers")]

import tiny  # noqa: E402
from test_reliability import (  # noqa: E402
    finished,
    isolated_env,
    outside_writes,
    project_config,
    result_of,
    stage_status,
    start,
    state_after_kill,
    wait_until,
)

from kdc.pipeline import STAGE_NAMES  # noqa: E402
from kdc.rundir import read_json, write_json  # noqa: E402
from kdc.tools import inspect_run  # noqa: E402


def uninterrupted(cfg: Path, run: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    proc = start(cfg, run, env)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed ({proc.returncode}): {err[-2000:]}")
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        **result_of(run),
        "stage_wall_s": {
            k: v["wall_s"] for k, v in read_json(run / "manifest.json")["stages"].items()
        },
    }


def kill_point(
    cfg: Path,
    run: Path,
    env: dict,
    stage: str,
    delay: float,
    ref: dict,
    watched: tuple[Path, ...],
    sig: signal.Signals = signal.SIGKILL,
) -> dict:
    """One run sent `sig` `delay` s after `stage` shows running, then resumed."""
    from malformed import snapshot

    before = snapshot(*watched, skip=run)
    proc = start(cfg, run, env)
    reached = wait_until(lambda: stage_status(run).get(stage) == "running", proc)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate()
    rec = {
        "signal": sig.name,
        "stage": stage,
        "delay_s": round(delay, 3),
        "reached": reached,
        "exit_code": proc.returncode,
        "last_line": (err.strip().splitlines() or [""])[-1],
        **state_after_kill(run),
    }
    rec["running_at_kill"] = [s for s, st in rec["stages"].items() if st == "running"]
    rec["left_outside_run_dir_by_kill"] = outside_writes(before, snapshot(*watched, skip=run))
    done_before = finished(run) if (run / "manifest.json").is_file() else {}
    proc = start(cfg, run, env, "--resume")
    _, err = proc.communicate()
    rec["resume_exit"] = proc.returncode
    if proc.returncode != 0:
        rec["resume_error"] = err.strip().splitlines()[-1:] if err.strip() else []
        rec["matched"] = False
        return rec
    after = finished(run)
    rec["kept"] = sorted(s for s, t in done_before.items() if after.get(s) == t)
    rec["redone"] = sorted(s for s in after if done_before.get(s) != after[s])
    resumed = read_json(run / "manifest.json")["stages"]["distill"]["metrics"]
    rec["distill_resumed_from_epoch"] = resumed.get("resumed_from_epoch")
    rec["differences"] = differences(ref, result_of(run))
    rec["exactly_equal"] = not rec["differences"]
    rec["corrupt_after_resume"] = inspect_run(run)["corrupt"]
    rec["temp_files_after_resume"] = sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp*"))
    rec["matched"] = (
        not rec["differences"]
        and rec["done_intact"]
        and not rec["corrupt_after_resume"]
        and set(rec["kept"]) == set(done_before)
    )
    return rec


def differences(a: dict, b: dict) -> list[str]:
    """Where two runs' results (`result_of`) differ: architecture, teacher or an engine."""
    out = [k for k in ("architecture", "teacher") if a[k] != b[k]]
    engines = sorted(set(a["engines"]) | set(b["engines"]))
    return out + [
        f"{e}: {a['engines'].get(e)} vs {b['engines'].get(e)}"
        for e in engines
        if a["engines"].get(e) != b["engines"].get(e)
    ]


def kill_points(
    work: Path, project: Path, per_stage: int, ctrl_c_per_stage: int, seed: int
) -> dict:
    cfg = project_config(project, work)
    env = isolated_env(work)
    watched = (work / "home", work / "tmp", project.parent)
    ref = uninterrupted(cfg, work / "ref", env)
    again = uninterrupted(cfg, work / "again", env)
    rng = random.Random(seed)
    points = []
    plan = [(signal.SIGKILL, per_stage), (signal.SIGINT, ctrl_c_per_stage)]
    for stage in STAGE_NAMES:
        for sig, n in plan:
            for i in range(n):
                delay = rng.uniform(0, 0.9 * again["stage_wall_s"][stage])
                run = work / f"{sig.name}-{stage}-{i}"
                rec = kill_point(cfg, run, env, stage, delay, ref, watched, sig)
                print(
                    f"{sig.name} in {stage} after {delay:.2f} s: exit {rec['exit_code']}, running"
                    f" {rec['running_at_kill']}, resume exit {rec['resume_exit']}, matched "
                    f"{rec['matched']}",
                    flush=True,
                )
                points.append(rec)
    return {
        "config": {
            "project": "tests/helpers/tiny.py make_cnn_project",
            "distill_epochs": 2,
            "target": "host",
        },
        "reference": ref,
        "determinism": {"second_run": again, "differences": differences(ref, again)},
        "kill_points": points,
        "summary": {
            sig.name: _summary([p for p in points if p["signal"] == sig.name]) for sig, _ in plan
        },
    }


def _summary(points: list[dict]) -> dict:
    return {
        "tried": len(points),
        "exit_codes": dict(Counter(p["exit_code"] for p in points)),
        "resumed_ok": sum(p["resume_exit"] == 0 for p in points),
        "matched": sum(p["matched"] for p in points),
        "exactly_equal": sum(bool(p.get("exactly_equal")) for p in points),
        "done_stages_intact_after_kill": sum(p["done_intact"] for p in points),
        "left_temp_files_in_run_dir": sum(bool(p["temp_files"]) for p in points),
        "left_files_outside_run_dir": sum(bool(p["left_outside_run_dir_by_kill"]) for p in points),
    }


def malformed(work: Path, generated: int) -> dict:
    """Every explicit case and `generated` hypothesis configs: exit code and message."""
    import onnxruntime  # noqa: F401  (writes its .ses file to TMPDIR at import, not kdc)
    from hypothesis import HealthCheck, given, settings
    from malformed import compress, run_case, yaml_file
    from test_malformed_configs import config_mutations
    from test_malformed_inputs import CASES
    from tiny import sentences, tiny_bert, write_csv

    assets = work / "assets"
    assets.mkdir(parents=True)
    model, tok = tiny_bert(assets)
    model.save_pretrained(str(assets / "bert"))
    tok.save_pretrained(str(assets / "bert"))
    write_csv(assets / "text.csv", sentences(60, 1))
    tempfile.tempdir = str(work / "private-tmp")
    Path(tempfile.tempdir).mkdir()
    explicit = []
    for case in CASES:
        root = work / "explicit" / case.name.replace(" ", "-").replace("'", "")
        root.mkdir(parents=True)
        o = run_case(case.build(root, assets), root, watched=(assets,))
        ok = (
            o.exit_code == case.code
            and len(o.lines) == 1
            and all(e in o.text for e in case.expect)
            and not o.outside_writes
        )
        explicit.append(
            {
                "name": case.name,
                "exit_code": o.exit_code,
                "expected": case.code,
                "message": o.text[:300],
                "clean": ok,
                "outside_writes": o.outside_writes,
            }
        )
    outcomes: list[dict] = []

    @settings(
        max_examples=generated,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(config_mutations())
    def one(mutation):
        cfg, field, kind = mutation
        root = Path(tempfile.mkdtemp(dir=work))
        o = run_case(compress(yaml_file(root / "model.yaml", cfg)), root)
        outcomes.append(
            {
                "kind": kind,
                "field": field,
                "exit_code": o.exit_code,
                "one_line": len(o.lines) == 1,
                "names_field": f"'{field}" in o.text,
                "traceback": "Traceback" in o.text,
                "outside_writes": bool(o.outside_writes),
            }
        )

    one()
    clean = [
        o
        for o in outcomes
        if o["exit_code"] == 2
        and o["one_line"]
        and o["names_field"]
        and not o["traceback"]
        and not o["outside_writes"]
    ]
    return {
        "explicit": explicit,
        "generated": {
            "count": len(outcomes),
            "clean": len(clean),
            "by_exit_code": dict(Counter(o["exit_code"] for o in outcomes)),
            "by_kind": dict(Counter(o["kind"] for o in outcomes)),
            "by_section": dict(Counter(o["field"].split(".")[0] for o in outcomes)),
            "not_clean": [o for o in outcomes if o not in clean][:20],
        },
        "total": len(explicit) + len(outcomes),
        "clean_total": sum(e["clean"] for e in explicit) + len(clean),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills-per-stage", type=int, default=2, help="SIGKILL points per stage")
    ap.add_argument("--ctrl-c-per-stage", type=int, default=1, help="SIGINT points per stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generated", type=int, default=160)
    ap.add_argument("--no-kills", action="store_true", help="only the malformed inputs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdc-reliability-") as d:
        work = Path(d)
        (work / "cnn").mkdir()
        project = tiny.make_cnn_project(work / "cnn")
        result = {
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "load_1min": os.getloadavg()[0],
            },
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if not args.no_kills:
            result["crash_safety"] = kill_points(
                work / "kills", project, args.kills_per_stage, args.ctrl_c_per_stage, args.seed
            )
            write_json(args.out, result)  # kept even if what follows fails
        result["malformed_inputs"] = malformed(work / "malformed", args.generated)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
