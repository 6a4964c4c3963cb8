"""Stage order, the run context shared by stages, resume, and progress display."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from kdc import __version__
from kdc.config import KdcConfig
from kdc.data.base import Dataset
from kdc.deploy.ort_install import conflict_warning
from kdc.errors import UserError
from kdc.fingerprint import inputs_fingerprint
from kdc.interrupts import signals_as_interrupt
from kdc.models.base import ModelAdapter
from kdc.preflight import builds_tensorrt, check_fit
from kdc.profiles import HardwareProfile
from kdc.progress import Advance, progress
from kdc.rundir import RunDir, library_versions, sha256_json, target_flag
from kdc.stage_reads import (
    BUILD,
    COMMON,
    LATENCY,
    PARITY,
    TENSORRT_ONLY,
    WHOLE_CONFIG,
    ConfigReads,
    ProfileReads,
    build_idle,
    build_profile,
    build_versions,
    config_reads,
    distill_idle,
    distill_profile,
    distill_reads,
    distill_versions,
    eval_cut_versions,
    required_outputs,
    search_versions,
    split_reads,
    whole_profile,
)
from kdc.upstream_reads import UPSTREAM_READS

EXAMPLE_ROWS = 2  # the rows a model is traced (export: a dynamic batch) or probed on


@dataclass
class StageOutput:
    outputs: list[Path]
    metrics: dict[str, Any] = field(default_factory=dict)
    earlier_s: float = 0.0  # time an interrupted earlier run spent on work this one continued


@dataclass
class Context:
    """Everything a stage may read: config, target profile, run directory, console."""

    cfg: KdcConfig
    profile: HardwareProfile
    run: RunDir
    console: Console
    quiet: bool = False
    device_results: Path | None = None  # results/ brought back from a device bundle
    target_file: str | None = None  # the profile YAML a run is compressed for, if not a name
    ran: list[str] = field(default_factory=list)  # stages this invocation ran (not skipped)
    started: float | None = None  # time.perf_counter() as this invocation's stages began

    @cached_property
    def dataset(self) -> Dataset:
        from kdc.data import load_dataset
        from kdc.models import teacher_label_names

        ds = load_dataset(self.cfg, teacher_label_names(self.cfg))
        for note in ds.notes:
            self.warn(note)
        return ds

    @cached_property
    def inputs_hash(self) -> str:
        """`inputs_fingerprint` of the config, computed once per run."""
        return inputs_fingerprint(self.cfg)

    @cached_property
    def teacher(self) -> ModelAdapter:
        from kdc.models import load_teacher
        from kdc.teacher_fit import check_label_count

        _ = self.dataset  # first: reading it checks config.json's id2label, naming the fix
        t = load_teacher(self.cfg)
        check_label_count(self, t)
        return t

    def encode(self, split: str, rows: int | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Model inputs of a split, encoded once per run by the teacher's encoder (a progress
        bar as it goes); with `rows`, of its first `rows` rows only, sliced from the whole split
        or the longest head encoded so far, else that head encoded alone (inputs are padded to a
        fixed length, so a head encodes as the split's first rows do): a stage that needs an
        example or calibration rows does not tokenize every training row, nor the same rows
        twice. `rows` an array of row indices: those rows, sliced from the whole split where it
        was encoded, else encoded alone (search's scoring batch)."""
        cache = self.__dict__.setdefault("_encoded", {})
        part = getattr(self.dataset, split)
        if rows is None:
            if split not in cache:
                with self.progress(f"encoding the {split} rows", len(part)) as advance:
                    cache[split] = self.teacher.encode(part.features, progress=advance)
            return cache[split]
        if isinstance(rows, np.ndarray):
            whole = cache.get(split)
            if whole is None:
                return self.teacher.encode(part.take(rows).features)
            return {k: v[rows] for k, v in whole.items()}
        rows = min(rows, len(part))
        head = cache.get(split) or cache.get((split, "head"))
        if head is None or len(next(iter(head.values()))) < rows:
            head = cache[(split, "head")] = self.teacher.encode(part.take(np.arange(rows)).features)
        return {k: v[:rows] for k, v in head.items()}

    def latency_inputs(self) -> dict[str, np.ndarray]:
        """What latency and memory are measured and predicted on: the first `verify.batch` eval
        rows, repeated in order where the split has fewer."""
        from kdc.deploy.latency import take_rows

        batch = self.cfg.verify.batch
        return take_rows(self.encode("eval", batch), batch)

    def latency_padding(self) -> float:
        """The fraction of `latency_inputs`' attention-mask positions that are 0 (what the
        latency model costs masked attention scores at)."""
        mask = self.latency_inputs().get("attention_mask")
        return 0.0 if mask is None or not mask.size else float(1.0 - np.mean(mask != 0))

    @property
    def dla_core(self) -> int | None:
        """The DLA core the run's TensorRT engine is built for (build.dla_core), where it builds
        one: its latency is predicted on that core (kdc.deploy.dla)."""
        core = self.cfg.build.dla_core
        return core if core is not None and builds_tensorrt(self.cfg, self.profile) else None

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Advance]:
        """Progress of a long step (kdc.progress; silent with -q); yields `advance(n=1,
        total=None, **fields)`."""
        if self.quiet:
            yield lambda n=1, total=None, **kw: None
            return
        with progress(self.console, description, total) as advance:
            yield advance

    def log(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg)

    def warn(self, msg: str) -> None:
        """Print a warning (plain text, not markup): unlike `log`, also with -q."""
        self.console.print(f"  [yellow]warning[/yellow]: {escape(msg)}")


StageFn = Callable[[Context], StageOutput]


@dataclass(frozen=True)
class Stage:
    name: str
    fn: StageFn
    # the config a stage reads, as sections ("teacher") or fields ("quantize.precision"): a
    # change to any re-runs the stage, a change to anything else does not
    reads: ConfigReads
    # what of the target profile it reads (by default all of it): another target that agrees
    # on these keeps the stage's outputs on `--resume`
    profile_reads: ProfileReads = lambda cfg, profile: profile.model_dump(mode="json")
    # the versions of kdc's own recipes it runs for `cfg` (QAT's scheme, NNCF PTQ's, a CNN's
    # BatchNorm re-estimation, a transformer's pruning, its head costs), hashed from 2 on: a run
    # of version 1 hashes as before versions existed, one of another version runs the stage again
    versions: Callable[[KdcConfig], dict[str, int]] = lambda cfg: {}
    # what of `reads` cannot change its outputs for `cfg` (`config_reads`: hashed at defaults)
    idle: ConfigReads = lambda cfg: ()


def _stages() -> list[Stage]:
    from kdc.stages import build, distill, export, report, search, verify

    return [
        # build.dla_core: the core a TensorRT engine's latency is predicted on
        Stage(
            "search",
            search.run,
            lambda cfg: (*COMMON, "student", "search", "constraints.latency_budget_ms", *LATENCY),
            whole_profile("dla_core"),
            search_versions,
        ),
        Stage(
            "distill",
            distill.run,
            distill_reads,
            distill_profile,
            distill_versions,
            distill_idle,
        ),
        # parity inputs are eval rows (data), the output name the task's; no target facet
        Stage(
            "export",
            export.run,
            lambda cfg: (*split_reads(cfg), "export"),
            lambda c, p: None,
            eval_cut_versions,
        ),
        # calibration rows (data); verify.threads times the PTQ backends `ptq: auto` picks from
        Stage(
            "build",
            build.run,
            lambda cfg: (*split_reads(cfg), *BUILD, "quantize", "verify.batch", "verify.threads"),
            build_profile,
            build_versions,
            build_idle,
        ),
        # build.max_batch: the batch a TensorRT engine's memory is predicted at
        Stage(
            "verify",
            verify.run,
            lambda cfg: (*split_reads(cfg), "verify", *PARITY),
            whole_profile(*TENSORRT_ONLY),
            eval_cut_versions,
        ),
        Stage(
            "report",
            report.run,
            lambda cfg: (WHOLE_CONFIG,),
            versions=lambda cfg: {"report": report.VERSION},
        ),
    ]


STAGE_NAMES = ("search", "distill", "export", "build", "verify", "report")


def stage_hash(
    stage: Stage, cfg: KdcConfig, profile: HardwareProfile, upstream: str, inputs_fp: str
) -> str:
    versions = {k: v for k, v in stage.versions(cfg).items() if v > 1}
    return sha256_json(
        {
            "kdc": __version__,
            "stage": stage.name,
            "upstream": upstream,
            "config": config_reads(cfg, stage.reads(cfg), stage.idle(cfg)),
            "profile": stage.profile_reads(cfg, profile),
            "inputs": inputs_fp,
            **({"versions": versions} if versions else {}),
        }
    )


# a write refused by the file system: the user's environment, not a bug in kdc
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _refused(ctx: Context, stage: str, e: OSError) -> UserError:
    """A file-system refusal (permissions, read-only, full) as the user's to fix: in the run
    directory its writability, elsewhere (data, a cache, /tmp) the file named."""
    path = Path(e.filename or ctx.run.root).absolute()
    if path.is_relative_to(ctx.run.root.absolute()):
        return UserError(
            f"stage '{stage}' cannot write {path} ({e.strerror})",
            source=str(ctx.run.root),
            fix="make the run directory writable (or free space), or pass another --out",
        )
    return UserError(
        f"stage '{stage}' was refused {path} ({e.strerror})",
        fix="check that file's permissions and the free space of its file system",
    )


def _run_one(
    ctx: Context, stage: Stage, input_hash: str, upstream: str, pressed: Callable[[], bool]
) -> None:
    ctx.log(f"[bold]▶ {stage.name}[/bold]")
    ctx.run.mark_started(
        stage.name, input_hash, upstream, ctx.inputs_hash, _all_upstream(ctx.run, stage.name)
    )
    t0 = time.perf_counter()
    try:
        out = stage.fn(ctx)
    except Exception as e:
        if pressed():  # the signal, whatever a library made of it: the stage stays "running"
            raise KeyboardInterrupt from e
        with contextlib.suppress(OSError):  # the manifest may be as unwritable as the artifact
            ctx.run.mark_failed(stage.name, f"{type(e).__name__}: {str(e)[:300]}")
        if isinstance(e, OSError) and e.errno in UNWRITABLE:
            raise _refused(ctx, stage.name, e) from None
        raise
    if pressed():
        raise KeyboardInterrupt  # reported as Interrupted by signals_as_interrupt
    wall_s = time.perf_counter() - t0 + out.earlier_s
    ctx.run.mark_done(stage.name, input_hash, out.outputs, out.metrics, wall_s)
    ctx.ran.append(stage.name)


def stage_not_ready(
    ctx: Context, name: str, input_hash: str | None = None, *, stale_upstream: bool = False
) -> UserError:
    """Why stage `name` cannot be taken as done: it has not finished, an output it recorded is
    missing or was changed after it ran, (`stale_upstream`) an earlier stage ran again after it,
    (`input_hash` given) it ran with other inputs, or its record lacks an output it must make for
    the config (`unrecorded`)."""
    rec = ctx.run.stage(name) or {}
    bad = ctx.run.verify_outputs(name) if rec.get("status") == "done" else []
    if stale_upstream:  # from the first stage of the chain an earlier one's new outputs broke
        first = (outdated(ctx.run) or [name])[0]
        earlier = STAGE_NAMES[STAGE_NAMES.index(first) - 1]
        how = "it ran again" + (", or `kdc bundle` rewrote its bundle," * (earlier == "build"))
        what = f"was built from earlier outputs of '{earlier}' ({how} since)"
    elif rec.get("status") == "failed":  # its error names the cause (and its fix)
        what = f"failed: {(rec.get('error') or 'no error recorded').splitlines()[0]}"
    elif rec.get("status") != "done":
        what = "has not run" if not rec else f"has not finished (it is {rec.get('status')})"
    elif bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        what = f"output {bad[0]}{more} is missing or was changed after the stage ran"
    elif input_hash is not None and rec.get("input_hash") != input_hash:
        what = "ran with other inputs (config, target, teacher or an earlier stage changed)"
    elif missing := unrecorded(ctx.run, name, ctx.cfg):  # same inputs: an older kdc's record
        what = f"did not record {missing[0]}, which it makes for this config"
    else:
        what = "is not done"
    manifest = ctx.run.manifest()
    built_for = manifest.get("target")
    # the run's target; before any stage recorded one, the target this command was given
    asked = {"target": ctx.profile.name, "target_file": ctx.target_file}
    tgt = target_flag(manifest if built_for else asked)
    again = f"`kdc compress CONFIG{{}} --out {ctx.run.root} --resume`"
    fix = f"re-run it: `kdc {name} CONFIG{tgt} --out {ctx.run.root}`, or {again.format(tgt)}"
    if built_for and built_for != ctx.profile.name and not stale_upstream:
        # the earlier stages are the run's target's: this one cannot run alone for another
        what = f"{what} (the run is for {built_for}, not {ctx.profile.name})"
        if rec.get("status") == "done" and not bad:  # done: for the run's target
            fix = (
                f"pass{tgt or ' --target host'} (the run's target), or redo the run for "
                f"{ctx.profile.name}, replacing its report: {again.format(target_flag(asked))}; "
                "or pass another --out for a run of its own"
            )
    return UserError(
        f"stage '{name}' {what}",
        source=str(ctx.run.root),
        fix=("mend what it names, then " if rec.get("status") == "failed" else "") + fix,
    )


def upstream_hash(run: RunDir, name: str) -> str:
    """The hash of what stage `name` reads of the finished stage before it ("" for the first):
    part of its input hash."""
    reads = UPSTREAM_READS.get(name)
    return reads(run) if reads else _all_upstream(run, name)


def _all_upstream(run: RunDir, name: str) -> str:
    """The hash of all the outputs of the stage before `name` ("" for the first)."""
    i = STAGE_NAMES.index(name)
    return run.output_hash(STAGE_NAMES[i - 1]) if i else ""


def outdated(run: RunDir) -> list[str]:
    """Finished stages built from other outputs of the stage before them than those it has now
    (it ran again after them, e.g. `kdc search` alone in a finished run, or `kdc bundle` rewrote
    the build's bundle), and the finished stages after them. A stage a resume found up to date
    for the earlier stage's new outputs (the same student chosen for another target) is not."""
    found: list[str] = []
    for prev, name in zip(STAGE_NAMES, STAGE_NAMES[1:], strict=False):
        rec = run.stage(name) or {}
        now = {"", run.output_hash(prev)}
        if "upstream_outputs" in rec:
            built_from = rec["upstream_outputs"] or ""
        else:  # recorded before: `upstream` hashed what it read of the earlier outputs, or all
            built_from, now = rec.get("upstream") or "", now | {upstream_hash(run, name)}
        if rec.get("status") == "done" and (found or built_from not in now):
            found.append(name)  # and every finished stage after it, built from its outputs
    return found


@dataclass(frozen=True)
class StageInputs:
    """What stage `name` of `run` runs from now: the hash of what it reads of the stage before it
    (`upstream_hash`) and its input hash (`stage_hash`)."""

    run: RunDir
    name: str
    upstream: str
    input_hash: str
    unrecorded: tuple[str, ...] = ()  # outputs it must make for the config, not recorded

    def up_to_date(self) -> bool:
        """The resume's skip test: the stage finished with this input hash, its outputs intact,
        among them every one it must make for the config (`required_outputs`)."""
        return not self.unrecorded and self.run.is_done(self.name, self.input_hash)


def unrecorded(run: RunDir, name: str, cfg: KdcConfig) -> tuple[str, ...]:
    """The outputs stage `name` must make for `cfg` (`required_outputs`) that its record lacks."""
    recorded = (run.stage(name) or {}).get("outputs", {})
    return tuple(o for o in required_outputs(name, cfg) if o not in recorded)


def stage_inputs(
    stage: Stage, cfg: KdcConfig, profile: HardwareProfile, run: RunDir, inputs_fp: str
) -> StageInputs:
    """`StageInputs` of `stage` in `run` for `cfg` on `profile` (teacher and data `inputs_fp`):
    what `run_stages` and `resume_plan` both decide a resume by."""
    upstream = upstream_hash(run, stage.name)
    h = stage_hash(stage, cfg, profile, upstream, inputs_fp)
    return StageInputs(run, stage.name, upstream, h, unrecorded(run, stage.name, cfg))


def resume_plan(cfg: KdcConfig, profile: HardwareProfile, run: RunDir) -> dict[str, str]:
    """What a `--resume` of `run` would do with each stage, as `run_stages` decides it: a stage
    whose own inputs changed (config, teacher, data, the earlier stage's outputs as they are)
    runs; one after it that would be up to date on those outputs runs unless the last such stage
    before it makes the same outputs as before; the others are skipped."""
    plan: dict[str, str] = {}
    inputs, ran = inputs_fingerprint(cfg), None
    for stage in _stages():
        if not stage_inputs(stage, cfg, profile, run, inputs).up_to_date():
            ran, plan[stage.name] = stage.name, "runs"
        elif ran:
            plan[stage.name] = f"runs, unless {ran} makes the same outputs as before"
        else:
            plan[stage.name] = "up to date, skipped"
    return plan


def require_stage(ctx: Context, name: str) -> None:
    """A UserError unless stage `name` of the run finished and its outputs are intact."""
    rec = ctx.run.stage(name) or {}
    if rec.get("status") != "done" or ctx.run.verify_outputs(name):
        raise stage_not_ready(ctx, name)


@contextlib.contextmanager
def _first_stage(ctx: Context, replacing: str | None, record: Callable[[], None]) -> Iterator[None]:
    """Around the first stage an invocation runs: the run's files as they were are kept
    (`RunDir.keep_previous`) before `record` rewrites its manifest, and put back if the stage
    refuses its input (bad input costs no finished run); dropped once it finishes, fails a
    constraint (its failed report is this run's result) or is interrupted (it is resumed)."""
    kept = ctx.run.keep_previous()
    try:
        if replacing:
            ctx.warn(replacing)
        record()
        yield
    except UserError:
        if kept:
            kept = False  # what a failed restore leaves goes with the next run's temporaries
            with contextlib.suppress(OSError):  # the stage's error is the one to report
                ctx.run.restore_previous()
                root = escape(str(ctx.run.root))
                ctx.log(f"[dim]{root} holds the run it held before (no stage finished)[/dim]")
        raise
    finally:
        if kept:
            ctx.run.drop_previous()


def run_stages(
    ctx: Context,
    *,
    resume: bool,
    only: tuple[str, ...] | None = None,
    trust_upstream: bool = False,
    replacing: str | None = None,
) -> dict:
    """Run the stages in order (or `only` those), skipping finished ones on resume.
    `trust_upstream` (re-verifying a finished run): a stage not asked for counts as done when it
    finished and its outputs are intact, whatever the target, teacher files or kdc version now.
    `replacing`: a warning that this run replaces another's report, printed as the first stage
    starts, not when an earlier stage that is not ready refuses the command."""
    started = ctx.started = time.perf_counter()
    # what this invocation ran with; recorded, not compared: the config sections and the parts
    # of the profile each stage reads are already part of its input hash, which resume checks. A
    # re-verification keeps the target the run was built for (`kdc verify`'s default).
    # Recorded before the first stage runs (stages read it), not before the earlier stages are
    # found ready: a command refused for an unready stage leaves the manifest as it was.
    profile = {"name": ctx.profile.name, "sha256": ctx.profile.sha256()}

    def record() -> None:
        base = Path(ctx.cfg.base_dir).resolve()
        ctx.run.update_manifest(
            config_file=ctx.cfg.source_file,
            config_base_dir=ctx.cfg.base_dir,
            config_base_dir_from_run=os.path.relpath(base, ctx.run.root.resolve()),
            kdc_version=__version__,
            libraries=library_versions(),
            config=ctx.cfg.fingerprint(),
            config_sha256=ctx.cfg.sha256(),
            seed=ctx.cfg.seed,
            **(
                {"verified_for": profile}
                if trust_upstream
                else {
                    "target": ctx.profile.name,
                    "target_file": ctx.target_file,  # for `kdc verify RUN` to load it again
                    "profile": profile,
                    "verified_for": profile,
                }
            ),
        )

    if clash := conflict_warning():
        ctx.warn(clash)
    if stale := ctx.run.remove_stale_temp():
        ctx.log(f"[dim]removed {len(stale)} temporary file(s) an interrupted run left[/dim]")
    warned = False
    # read once: the stages taken as built come before any this invocation runs
    behind = outdated(ctx.run) if trust_upstream else []
    with signals_as_interrupt() as pressed:
        for stage in _stages():
            if only is not None and not set(only) & set(
                STAGE_NAMES[STAGE_NAMES.index(stage.name) :]
            ):
                break  # nothing asked for comes after this stage
            now = stage_inputs(stage, ctx.cfg, ctx.profile, ctx.run, ctx.inputs_hash)
            wanted = only is None or stage.name in only
            may_skip = not wanted or (resume and only is None)
            if not wanted and trust_upstream:  # taken as built: by the hash it recorded
                rec = ctx.run.stage(stage.name) or {}
                recorded = rec.get("input_hash", now.input_hash)
                now = dataclasses.replace(now, input_hash=recorded, unrecorded=())
                if stage.name in behind:
                    raise stage_not_ready(ctx, stage.name, stale_upstream=True)
                if rec.get("inputs", ctx.inputs_hash) != ctx.inputs_hash and not warned:
                    warned = True
                    ctx.warn(
                        f"the teacher or data files changed since stage '{stage.name}' ran: "
                        "figures are of the engines it built, evaluated on the data as it is "
                        "now (a changed eval split may hold training rows); `kdc compress "
                        "--resume` redoes the stages"
                    )
            if may_skip and now.up_to_date():
                ctx.log(f"[dim]✓ {stage.name}: up to date, skipped[/dim]")
                if not (trust_upstream and not wanted):  # the hash is this invocation's
                    ctx.run.confirm_upstream(stage.name, _all_upstream(ctx.run, stage.name))
            elif not wanted:
                raise stage_not_ready(ctx, stage.name, now.input_hash)
            else:
                if not ctx.ran:  # this invocation's first stage
                    # bad data (a label column, an eval label), teacher weights of another
                    # architecture or a student that does not fit the teacher is refused before
                    # a stage starts and the report of a finished run goes stale; its export
                    # check only before export (from export on, that stage says it)
                    before_export = STAGE_NAMES.index(stage.name) < STAGE_NAMES.index("export")
                    check_fit(ctx.cfg, ctx.dataset, export=before_export)
                with contextlib.nullcontext() if ctx.ran else _first_stage(ctx, replacing, record):
                    _run_one(ctx, stage, now.input_hash, now.upstream, pressed)
    if not ctx.ran:  # every stage skipped
        record()
    ctx.run.update_manifest(wall_s=round(time.perf_counter() - started, 2))
    return ctx.run.manifest()
