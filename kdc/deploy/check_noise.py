"""How far `kdc check` can trust a measured latency statistic: the noise of comparing two
measurements of it, and whether each rests on enough timed runs to compare at all."""

from __future__ import annotations

import math
import statistics

from kdc.deploy.trtexec import CV_LIMIT

NOISE_SIGMAS = 2.0
QUANTILES = {"p50": 0.5, "p99": 0.99}
_QUANTILE_NAME = {"p50": "median"}
# the fewest timed runs (a measurement's `iterations`) a statistic is compared from: the p99 of
# n runs is read between their two slowest (of 20, 81 % of the way to the slowest; of 50, 51 %),
# a draw of the machine's worst moment that a CI gate flaps on; 100 is the usual floor, from
# which it rests on the slowest 1 % of the runs. A median is steady from a few runs.
MIN_RUNS = {"p99": 100}


def quantile_se_factor(q: float) -> float:
    """k in s.e.(q-quantile) = k·std/sqrt(n) for normal samples: sqrt(q(1-q))/φ(Φ⁻¹(q)), 1.2533
    for the median (sqrt(π/2)) and 3.7336 for p99, whose estimate rests on the few slowest
    samples."""
    nd = statistics.NormalDist()
    return math.sqrt(q * (1 - q)) / nd.pdf(nd.inv_cdf(q))


def _rounds_spread(lat: dict, stat: str) -> float | None:
    rounds = lat.get(f"rounds_{stat}_ms") or []
    if len(rounds) < 2 or statistics.median(rounds) <= 0:
        return None
    return (max(rounds) - min(rounds)) / statistics.median(rounds)


def latency_noise(base: dict, cur: dict, stat: str = "p50") -> tuple[float, str]:
    """(relative noise, how it was estimated) of comparing `stat` of two latency objects of one
    kind: its own spread over rounds where both recorded it, else the p50's estimate."""
    if base.get("kind") != "measured":
        return 0.0, ""
    for s in dict.fromkeys((stat, "p50")):
        spreads = [_rounds_spread(base, s), _rounds_spread(cur, s)]
        if None not in spreads:
            return NOISE_SIGMAS * math.hypot(*spreads), f" ({s} spread over rounds)"
    if all(o.get("iterations") for o in (base, cur)):
        k = quantile_se_factor(QUANTILES[stat])
        se = [k * (o.get("cv") or 0.0) / math.sqrt(o["iterations"]) for o in (base, cur)]
        return NOISE_SIGMAS * math.hypot(*se), f" (s.e. of the {_QUANTILE_NAME.get(stat, stat)})"
    cvs = (base.get("cv") or 0.0, cur.get("cv") or 0.0)
    return NOISE_SIGMAS * math.hypot(*cvs), " (per-sample cv: iterations not recorded)"


def noisy(base: dict, cur: dict) -> str:
    """`; noisy (cv 4.1% baseline, 3.0% now)` for the measurements whose cv exceeds CV_LIMIT."""
    over = [
        f"{o['cv']:.1%} {which}"
        for o, which in ((base, "baseline"), (cur, "now"))
        if (o.get("cv") or 0.0) > CV_LIMIT
    ]
    return f"; noisy (cv {', '.join(over)})" if over else ""


def runs_fix(lat: dict, need: int) -> str:
    """How a measurement of too few timed runs gets `need` of them: the device's own timing
    (`on_target`) by the bundle's bench.sh as written, one stopped at its time limit by a longer
    one (verify.max_duration_s) or less work a run, else by verify.iterations."""
    if lat.get("on_target"):
        return "run the bundle's bench.sh as written on the device (it times more)"
    if (limit := lat.get("max_duration_s")) and lat.get("duration_s", 0) >= limit:
        return (
            f"timing stopped at its {limit:g} s limit (p50 {lat.get('p50_ms', 0):.4g} ms a "
            "run): raise verify.max_duration_s, or a smaller verify.batch times enough"
        )
    return f"raise verify.iterations to {need} or more"


def run_counts(base: dict, cur: dict, stat: str) -> tuple[str, str]:
    """(why two measurements' `stat` is not compared, a note where it is) by the timed runs each
    recorded (`iterations`) against MIN_RUNS: not compared where either has fewer (with
    `--strict` too: the statistic is undefined, not noisy); compared, and the note says so,
    where either does not record its runs (a report of an older kdc)."""
    need = MIN_RUNS.get(stat)
    if need is None:
        return "", ""
    sides = (("in the baseline", base), ("now", cur))
    short = [(w, o) for w, o in sides if (n := o.get("iterations")) and n < need]
    if short:
        runs = " and ".join(f"{o['iterations']} runs {w}" for w, o in short)
        why = (
            f"not compared: {stat} from {runs} (needs >= {need}); neither a regression nor an "
            f"improvement: {runs_fix(short[-1][1], need)} to gate it"
        )
        return why, ""
    unknown = [w for w, o in sides if not o.get("iterations")]
    if not unknown:
        return "", ""
    return "", (
        f"; timed runs not recorded {' nor '.join(unknown)} (iterations): compared, though a "
        f"{stat} needs >= {need} of them"
    )
