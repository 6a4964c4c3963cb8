"""Search over a space under a latency budget (`SEARCHERS`): a candidate whose predicted latency
exceeds the budget is rejected before it is scored.

`evolution`: aging (regularised) evolution (Real et al., AAAI 2019). The population starts with
the smallest candidate plus random feasible ones (when none of those fits, the search fails
listing the candidates predicted closest to the budget); each cycle mutates the best of
`sample_size` random members and retires the oldest. Scores and predictions are cached by gene
key, so revisits are free. `exhaustive`: every candidate, smallest genes first, until the time
budget; the choice then depends on the seed only through what `score` reads.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kdc.compress.space import Candidate, Space
from kdc.errors import NoStudentFits

MAX_TRIES = 20  # draws per wanted feasible candidate before giving up on it


@dataclass
class Scored:
    candidate: Candidate
    latency_ms: float
    score: float


@dataclass
class SearchResult:
    scored: list[Scored]  # unique candidates, in the order they were first scored
    rejected: list[tuple[Candidate, float]]  # unique candidates over the budget, predicted ms
    best: Scored
    cycles: int
    wall_s: float
    history: list[float] = field(default_factory=list)  # best score after each scoring
    left: int = 0  # candidates an exhaustive search left unexamined when its time ran out


def _rank(s: Scored) -> float:
    return s.score if not math.isnan(s.score) else -math.inf


def no_fit_message(
    rejected: list[tuple[Candidate, float]],
    budget_ms: float,
    where: str = "",
    other_fix: str = "",
) -> str:
    """The NoStudentFits text: budget and the 3 candidates predicted closest to it; `other_fix`
    is one more way out (`, or ...`)."""
    closest = sorted(rejected, key=lambda r: r[1])[:3]
    listed = "; ".join(f"{c.label} {ms:.4g} ms" for c, ms in closest)
    return (
        f"no student in the search space fits the latency budget of {budget_ms:g} ms{where}; "
        f"closest predicted: {listed} (raise constraints.latency_budget_ms, pick a faster "
        f"target or a smaller teacher{other_fix})"
    )


def _no_fit(
    rejected: list[tuple[Candidate, float]], budget_ms: float | None, where: str, fix: str
) -> None:
    tried = sorted(rejected, key=lambda r: r[1])
    raise NoStudentFits(
        no_fit_message(tried, budget_ms or 0.0, where, fix),
        [(c.architecture, ms) for c, ms in tried],
    )


def evolve(
    space: Space,
    score: Callable[[Candidate], float],
    latency: Callable[[Candidate], float],
    budget_ms: float | None,
    *,
    population: int,
    cycles: int,
    sample_size: int,
    time_budget_s: float,
    seed: int,
    progress: Callable[[Scored], None] | None = None,
    where: str = "",
    other_fix: str = "",
) -> SearchResult:
    """Maximise `score` over `space` among candidates with `latency` <= `budget_ms` (None: no
    limit). Raises NoStudentFits listing the closest candidates when none fits (`where` and
    `other_fix`: see `no_fit_message`)."""
    rng = random.Random(seed)
    start = time.perf_counter()
    scored: dict[str, Scored] = {}
    rejected: dict[str, tuple[Candidate, float]] = {}
    predicted: dict[str, float] = {}
    history: list[float] = []

    def feasible(genes: dict) -> Scored | None:
        c = space.decode(genes)
        if c.key in scored:
            return scored[c.key]
        if c.key not in predicted:
            predicted[c.key] = float(latency(c))
        ms = predicted[c.key]
        if budget_ms is not None and ms > budget_ms:
            rejected[c.key] = (c, ms)
            return None
        s = scored[c.key] = Scored(c, ms, float(score(c)))
        history.append(max(history[-1], _rank(s)) if history else _rank(s))
        if progress:
            progress(s)
        return s

    def out_of_time() -> bool:
        return time.perf_counter() - start > time_budget_s

    pop = deque([s] if (s := feasible(space.smallest())) else [])
    tries = 0
    while (
        len(pop) < population and tries < population * MAX_TRIES and (not pop or not out_of_time())
    ):
        tries += 1
        if s := feasible(space.sample(rng)):
            pop.append(s)
    if not pop:
        _no_fit(list(rejected.values()), budget_ms, where, other_fix)
    done = 0
    for _ in range(cycles):
        if out_of_time():
            break
        parent = max(rng.sample(list(pop), min(sample_size, len(pop))), key=_rank)
        for _ in range(MAX_TRIES):
            if child := feasible(space.mutate(parent.candidate.genes, rng)):
                pop.append(child)
                if len(pop) > population:
                    pop.popleft()
                break
        done += 1
    return SearchResult(
        list(scored.values()),
        list(rejected.values()),
        max(scored.values(), key=_rank),
        done,
        time.perf_counter() - start,
        history,
    )


def exhaustive(
    space: Space,
    score: Callable[[Candidate], float],
    latency: Callable[[Candidate], float],
    budget_ms: float | None,
    *,
    time_budget_s: float,
    progress: Callable[[Scored | None], None] | None = None,
    where: str = "",
    other_fix: str = "",
    **_evolution: object,  # population, cycles, sample_size, seed: evolution's settings
) -> SearchResult:
    """Score every candidate of `space` predicted within `budget_ms` (None: no limit), in the
    order of its genes' choices (the first gene outermost, smallest first), until
    `time_budget_s` has passed (`left` of the result counts the candidates not examined); the
    best scored wins. `progress` hears of every candidate examined (None: rejected)."""
    start = time.perf_counter()
    scored: list[Scored] = []
    rejected: list[tuple[Candidate, float]] = []  # each candidate once: no cache needed
    history: list[float] = []
    names = list(space.dims)
    everything = itertools.product(*(space.dims[k] for k in names))
    for i, values in enumerate(everything):
        if i and time.perf_counter() - start > time_budget_s:
            if not scored:
                ran_out = f" (search.time_budget_s ran out after {i:,} of {space.size:,})"
                _no_fit(rejected, budget_ms, where + ran_out, other_fix)
            return _result(scored, rejected, space.size - i, start, history)
        c = space.decode(dict(zip(names, values, strict=True)))
        ms = float(latency(c))
        if budget_ms is not None and ms > budget_ms:
            rejected.append((c, ms))
            if progress:
                progress(None)
            continue
        scored.append(s := Scored(c, ms, float(score(c))))
        history.append(max(history[-1], _rank(s)) if history else _rank(s))
        if progress:
            progress(s)
    if not scored:
        _no_fit(rejected, budget_ms, where, other_fix)
    return _result(scored, rejected, 0, start, history)


def _result(
    scored: list[Scored],
    rejected: list[tuple[Candidate, float]],
    left: int,
    start: float,
    history: list[float],
) -> SearchResult:
    best = max(scored, key=_rank)
    wall = time.perf_counter() - start
    return SearchResult(scored, rejected, best, 0, wall, history, left)


SEARCHERS = {"evolution": evolve, "exhaustive": exhaustive}


def pareto_flags(points: list[tuple[float, float]]) -> list[bool]:
    """For (latency, score) points: True where no other point is at least as fast and at least
    as good, and strictly better in one of the two; never where the score is NaN (a failed
    score, which dominates nothing either)."""
    return [
        not math.isnan(s1)
        and not any(l2 <= l1 and s2 >= s1 and (l2 < l1 or s2 > s1) for l2, s2 in points)
        for l1, s1 in points
    ]
