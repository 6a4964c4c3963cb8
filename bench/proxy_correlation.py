"""How well each training-free proxy ranks students by their accuracy after distillation (not a
test).

    python bench/proxy_correlation.py [--students 16 --text-epochs 3 --seed 0]
                                      [--speed-only | --rescore]

For the digits example (its SmallCNN teacher, trained by examples/digits/prepare.py when its
weights are missing) and a text example (examples/sentiment's teacher if present, else the tiny
BERT project of tests/helpers/tiny.py), samples distinct students of the search space (the teacher
itself excluded) and scores every proxy on one batch as the search stage does (teacher-initialised
students; `name@random` rows score randomly initialised ones). Then distils every student with
the same short budget (logit KD only) from its teacher initialisation and measures eval accuracy.
Reports Kendall tau-b, Spearman rho and precision@3 per proxy and example against accuracy
(`proxies`) and, because tiny tasks saturate accuracy, against minus the eval cross-entropy
(`proxies_vs_eval_loss`). Speed: `candidates_per_s` per example is the rate of the search stage
itself (kdc.api.search in this process, so without start-up; search.strategy evolution and its
defaults, no latency budget: students
up to half-way to the teacher's predicted latency), each student derived from the teacher, its
latency predicted and scored; `search_speed` adds the rates under budgets of 1/5 and 1/10 of the
teacher's predicted latency. Prints tables and writes bench/results/proxy.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812
from pipeline import write_config  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

from kdc import api  # noqa: E402
from kdc.api import open_run  # noqa: E402
from kdc.compress.distill import DistillData, distill  # noqa: E402
from kdc.compress.evaluate import evaluate_accuracy  # noqa: E402
from kdc.compress.proxies import PROXIES  # noqa: E402
from kdc.compress.space import space_for  # noqa: E402
from kdc.compress.student import derive_student, random_init  # noqa: E402
from kdc.config import LossConfig  # noqa: E402
from kdc.deploy.estimate import predict_architecture  # noqa: E402
from kdc.errors import ConstraintFailure  # noqa: E402
from kdc.profiles import cpu_info  # noqa: E402
from kdc.rundir import read_json, write_json  # noqa: E402
from kdc.stages.distill import validation_split  # noqa: E402
from kdc.stages.search import proxy_batch  # noqa: E402

SIZE = ("params", "flops")  # proxies that only count the architecture


def digits_config(work: Path) -> tuple[Path, str]:
    cfg = ROOT / "examples" / "digits" / "model.yaml"
    if not (ROOT / "examples" / "digits" / "teacher" / "model.safetensors").is_file():
        sys.path.insert(0, str(ROOT / "examples" / "digits"))
        from prepare import train

        train(cfg, epochs=20)
    return cfg, "examples/digits (SmallCNN 32-64-128, teacher from prepare.py)"


def text_config(work: Path) -> tuple[Path, str]:
    sentiment = ROOT / "examples" / "sentiment"
    if (sentiment / "teacher").is_dir() and (sentiment / "model.yaml").is_file():
        return sentiment / "model.yaml", "examples/sentiment"
    import tiny

    root = work / "tinybert"
    root.mkdir()
    return tiny.make_bert_project(root), (
        "tests/helpers/tiny.py tiny BERT (4 layers, hidden 32; "
        "examples/sentiment/teacher is absent)"
    )


EXAMPLES = {"digits": digits_config, "text": text_config}


def sample_students(space, n: int, seed: int) -> list:
    """`n` distinct candidates, the teacher itself excluded."""
    rng = random.Random(seed)
    teacher_key = space.decode(space.teacher_genes).key
    seen: dict[str, object] = {}
    for _ in range(n * 200):
        c = space.decode(space.sample(rng))
        if c.key != teacher_key:
            seen.setdefault(c.key, c)
        if len(seen) == n:
            break
    return list(seen.values())


def p_at_k(proxy: list[float], truth: list[float], k: int = 3) -> float:
    """Share of the k best students by proxy that are among the k best by `truth` (students
    tied with the k-th best count as among them)."""
    k = min(k, len(truth))
    top_proxy = set(np.argsort(-np.asarray(proxy), kind="stable")[:k])
    kth = sorted(truth, reverse=True)[k - 1]
    return len({i for i in top_proxy if truth[i] >= kth}) / k


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def correlations(rows: list[dict], truth_key: str) -> dict[str, dict]:
    """Per proxy: Kendall tau-b, Spearman rho and precision@3 against rows[truth_key]
    (None where the truth or the proxy is constant)."""
    truth = [r[truth_key] for r in rows]
    out = {}
    for p in rows[0]["proxies"]:
        vals = [r["proxies"][p] for r in rows]
        const = len(set(vals)) < 2 or len(set(truth)) < 2
        out[p] = {
            "kendall_tau": None if const else _num(kendalltau(vals, truth).statistic),
            "spearman_rho": None if const else _num(spearmanr(vals, truth).statistic),
            "p_at_3": p_at_k(vals, truth),
        }
    return out


def search_speed(config: Path, work: Path) -> list[dict]:
    """The search stage's own rate on `config`: evolution with its defaults (no budget), then
    under 1/5 and 1/10 of the teacher's predicted latency."""
    out = []
    for factor in (None, 5, 10):
        changes: dict = {"search": {"strategy": "evolution"}}
        if factor:
            teacher_ms = out[0]["teacher_predicted_latency_ms"]
            changes["constraints"] = {"latency_budget_ms": round(teacher_ms / factor, 4)}
        name = f"speed-{factor or 'default'}"
        cfg = write_config(config, changes, work / f"{name}.yaml")
        try:
            m = api.search(cfg, "host", work / name, quiet=True)["stages"]["search"]["metrics"]
        except ConstraintFailure as e:  # tiny teachers: the smallest student is over budget
            if not factor:
                raise
            out.append({"budget": f"teacher predicted / {factor}", "no_fit": str(e)})
            continue
        out.append(
            {
                "budget": f"teacher predicted / {factor}" if factor else m["budget_source"],
                **{
                    k: m[k]
                    for k in (
                        "budget_ms",
                        "teacher_predicted_latency_ms",
                        "candidates_scored",
                        "search_wall_s",
                        "candidates_per_s",
                        "torch_threads",
                    )
                },
            }
        )
    return out


def run_example(name: str, config: Path, students: int, epochs: int, seed: int, work: Path) -> dict:
    ctx = open_run(config, "host", work / f"run-{name}", quiet=True)
    cfg, teacher = ctx.cfg, ctx.teacher
    x, y = ctx.encode("train"), ctx.dataset.train.labels
    xe, ye = ctx.encode("eval"), ctx.dataset.eval.labels
    divisor = ctx.profile.defaults.channel_divisor
    bx, by = proxy_batch(x, y, cfg.search.batch_size, cfg.seed, cfg.search.proxy_max_tokens)
    t_logits = teacher.forward_numpy(x)
    tr, va = validation_split(len(y), cfg.seed)
    pick = lambda d, ix: {k: v[ix] for k, v in d.items()}  # noqa: E731
    dcfg = cfg.distill.model_copy(
        update={
            "epochs": epochs,
            "early_stopping_patience": None,
            "losses": [LossConfig(name="logits")],
        }
    )
    space = space_for(teacher, x, divisor)
    shapes = space.input_shapes(1)
    rows = []
    student_of = lambda c: derive_student(teacher, c.spec, x, divisor)  # noqa: E731
    for c in sample_students(space, students, seed):
        student = student_of(c)
        ms = predict_architecture(
            c.cost, ctx.profile, precision="fp32", batch=1, input_shapes=shapes
        )["p50_ms"]
        proxies = score_proxies(teacher, student, random_init(student_of(c), seed), bx, by)
        data = DistillData(pick(x, tr), y[tr], pick(x, va), y[va], t_logits[tr])
        distill(student, data, dcfg, seed, teacher=teacher)
        logits = torch.from_numpy(student.forward_numpy(xe))
        rows.append(
            {
                "label": c.label,
                "genes": c.genes,
                "params": student.params(),
                "predicted_latency_ms_host_fp32": ms,
                "eval_accuracy": float((logits.argmax(-1).numpy() == ye).mean()),
                "neg_eval_loss": -float(F.cross_entropy(logits, torch.from_numpy(ye))),
                "proxies": {k: float(v) for k, v in proxies.items()},
            }
        )
    return {
        "correlation": correlations(rows, "eval_accuracy"),
        "correlation_vs_loss": correlations(rows, "neg_eval_loss"),
        "rows": rows,
        "search_speed": search_speed(config, work / f"speed-{name}"),
        "teacher_eval_accuracy": evaluate_accuracy(teacher, xe, ye),
        "teacher_params": teacher.params(),
        "space_size": space.size,
        "distill": {
            "epochs": epochs,
            "batch_size": dcfg.batch_size,
            "lr": dcfg.lr,
            "losses": [loss.name for loss in dcfg.losses],
        },
        "eval_rows": int(len(ye)),
        "proxy_batch": int(len(by)),
        "proxy_max_tokens": cfg.search.proxy_max_tokens,
    }


def score_proxies(teacher, student, rand, bx: dict, by: np.ndarray) -> dict[str, float]:
    """Every proxy on the teacher-initialised `student`, and `name@random` on `rand` (the same
    architecture randomly initialised) for those that look at the weights."""
    proxies = {n: f(teacher, student, bx, by) for n, f in PROXIES.items()}
    proxies.update(
        {f"{n}@random": f(teacher, rand, bx, by) for n, f in PROXIES.items() if n not in SIZE}
    )
    return {k: float(v) for k, v in proxies.items()}


def rescore(out: Path) -> None:
    """Re-score every proxy on the students of an existing report (their distilled accuracies
    kept: they do not depend on the proxies), as the search stage now scores them."""
    report = read_json(out)
    corr: dict[str, dict] = {"proxies": {}, "proxies_vs_eval_loss": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in EXAMPLES.items():
            ex, rows = report["examples"][name], report["rows"][name]
            config, source = make(Path(tmp))
            if source != ex["source"]:
                raise SystemExit(f"{out} measured {ex['source']}, not {source}")
            ctx = open_run(config, "host", Path(tmp) / f"run-{name}", quiet=True)
            x, y = ctx.encode("train"), ctx.dataset.train.labels
            bx, by = proxy_batch(
                x, y, ex["proxy_batch"], ctx.cfg.seed, ctx.cfg.search.proxy_max_tokens
            )
            divisor = ctx.profile.defaults.channel_divisor
            space = space_for(ctx.teacher, x, divisor)
            for row in rows:
                spec = space.decode(row["genes"]).spec
                student, rand = (derive_student(ctx.teacher, spec, x, divisor) for _ in range(2))
                rand = random_init(rand, report["args"]["seed"])
                row["proxies"] = score_proxies(ctx.teacher, student, rand, bx, by)
            corr["proxies"][name] = correlations(rows, "eval_accuracy")
            corr["proxies_vs_eval_loss"][name] = correlations(rows, "neg_eval_loss")
            ex["proxy_max_tokens"] = ctx.cfg.search.proxy_max_tokens
    for key, by_example in corr.items():
        report[key] = {p: {n: c[p] for n, c in by_example.items()} for p in by_example["digits"]}
    report["rescored_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(out, report)
    print_tables(report)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def remeasure_speed(out: Path) -> None:
    """Replace the search rates of an existing report, keeping its correlations."""
    report = read_json(out)
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in EXAMPLES.items():
            config, source = make(Path(tmp))
            if source != report["examples"][name]["source"]:
                raise SystemExit(
                    f"{out} measured {report['examples'][name]['source']}, not {source}"
                )
            speed = search_speed(config, Path(tmp) / f"speed-{name}")
            report["examples"][name]["search_speed"] = speed
            report["candidates_per_s"][name] = speed[0]["candidates_per_s"]
    report["speed_measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["speed_torch_threads"] = torch.get_num_threads()
    report["speed_machine"] = cpu_info()[0]
    write_json(out, report)
    for name, ex in report["examples"].items():
        for s in ex["search_speed"]:
            rate = s.get("candidates_per_s", "no student fits")
            print(f"{name}: {rate} candidates/s ({s['budget']})")


def print_tables(report: dict) -> None:
    """The correlation tables and each example's accuracy range and search rates."""
    console = Console()
    examples = list(report["examples"])
    students = len(report["rows"][examples[0]])
    for key, truth in (("proxies", "accuracy"), ("proxies_vs_eval_loss", "-eval loss")):
        table = Table(
            "proxy",
            *[f"{n} {m}" for n in examples for m in ("tau", "rho", "p@3")],
            title=f"{students} students per example vs {truth} after distillation",
        )
        for p, by_example in report[key].items():
            table.add_row(
                p,
                *[
                    _fmt(by_example[n][m])
                    for n in examples
                    for m in ("kendall_tau", "spearman_rho", "p_at_3")
                ],
            )
        console.print(table)
    for n, ex in report["examples"].items():
        accs = [row["eval_accuracy"] for row in report["rows"][n]]
        console.print(
            f"{n}: {ex['source']}; teacher accuracy {ex['teacher_eval_accuracy']:.4f}, "
            f"students {min(accs):.4f}..{max(accs):.4f}; search stage "
            + ", ".join(
                f"{s['candidates_per_s']:.2f} candidates/s ({s['budget']}, {s['budget_ms']:.4g} ms)"
                for s in ex["search_speed"]
                if "no_fit" not in s
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=16)
    ap.add_argument("--digits-epochs", type=int, default=5)
    ap.add_argument("--text-epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "proxy.json")
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="re-measure only the search rates in an existing --out (on an idle machine)",
    )
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="re-score the proxies of the students in an existing --out (accuracies kept)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed_only:
        remeasure_speed(args.out)
        return
    if args.rescore:
        rescore(args.out)
        return
    started = time.perf_counter()
    results, sources = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in EXAMPLES.items():
            config, sources[name] = make(Path(tmp))
            epochs = args.digits_epochs if name == "digits" else args.text_epochs
            results[name] = run_example(name, config, args.students, epochs, args.seed, Path(tmp))
    names = list(results["digits"]["correlation"])
    report = {
        "candidates_per_s": {
            n: r["search_speed"][0]["candidates_per_s"] for n, r in results.items()
        },
        "proxies": {p: {n: r["correlation"][p] for n, r in results.items()} for p in names},
        "proxies_vs_eval_loss": {
            p: {n: r["correlation_vs_loss"][p] for n, r in results.items()} for p in names
        },
        "examples": {
            n: {
                "source": sources[n],
                **{
                    k: v
                    for k, v in r.items()
                    if k not in ("correlation", "correlation_vs_loss", "rows")
                },
            }
            for n, r in results.items()
        },
        "rows": {n: r["rows"] for n, r in results.items()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": f"{cpu_info()[0]}, Python {platform.python_version()}",
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, report)
    print_tables(report)
    print(f"wrote {args.out} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
