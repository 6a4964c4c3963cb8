"""Whether verify's timing can judge the run's latency budget: on a measurable target (host) the
budget is judged by the p99 verify times, which needs check_noise.MIN_RUNS timed runs; a p99 of
fewer is not judged and fails the run (constraints.py). verify.iterations under that is refused
where the config sets the budget and verify.min_duration_s is 0 (the timing then takes exactly
that many runs: the run could only fail), else warned (the minimum duration may time enough)."""

from __future__ import annotations

from kdc.config import KdcConfig
from kdc.deploy.check_noise import MIN_RUNS
from kdc.errors import UserError
from kdc.profiles import HardwareProfile


def _budget(cfg: KdcConfig, profile: HardwareProfile) -> tuple[float, str] | None:
    """(latency budget, where it is set) where verify's own timing is judged against it with
    fewer iterations than a p99 needs, else None."""
    if not profile.measurable or cfg.verify.iterations >= MIN_RUNS["p99"]:
        return None
    if mine := cfg.constraints.latency_budget_ms:
        return mine, "constraints.latency_budget_ms"
    if its := profile.defaults.latency_budget_ms:
        return its, f"{profile.name}'s default budget"
    return None


def check_p99_runs(cfg: KdcConfig, profile: HardwareProfile) -> None:
    """Refuse verify.iterations under MIN_RUNS with no minimum duration where the config's own
    latency budget is judged by verify's p99 (module docstring)."""
    found, need, asked = _budget(cfg, profile), MIN_RUNS["p99"], cfg.verify.iterations
    if found is None or found[1] != "constraints.latency_budget_ms" or cfg.verify.min_duration_s:
        return
    raise UserError(
        f"verify.iterations {asked} with verify.min_duration_s 0 times {asked} runs, and "
        f"constraints.latency_budget_ms ({found[0]:g} ms) is judged on {profile.name} by their "
        f"p99, which needs >= {need}: the run would fail with its budget not judged",
        source=cfg.source_file,
        field="verify.iterations",
        fix=f"raise verify.iterations to {need}",
    )


def p99_runs(cfg: KdcConfig, profile: HardwareProfile) -> list[str]:
    """A warning of verify.iterations under MIN_RUNS where a latency budget is judged by verify's
    p99 (`kdc validate` asks for host, the default target), where `check_p99_runs` lets it be."""
    found, need, asked = _budget(cfg, profile), MIN_RUNS["p99"], cfg.verify.iterations
    if found is None:
        return []
    return [
        f"verify.iterations {asked} < {need}: the latency budget ({found[0]:g} ms, {found[1]}) "
        f"is judged by the p99 measured on {profile.name}, which needs >= {need} timed runs; a "
        f"p99 of fewer is not judged and fails the run: raise verify.iterations to {need}"
    ]
