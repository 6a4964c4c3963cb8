"""The Python API: `compress` runs every stage; one function per stage runs it alone on a run
directory whose earlier stages are done. The CLI is a thin layer over these."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from kdc.config import KdcConfig, load_config, parse_config
from kdc.errors import UserError
from kdc.profiles import HardwareProfile, load_profile
from kdc.rundir import LOCK, RunBusy, RunDir, check_run_root, read_json

if TYPE_CHECKING:
    from kdc.pipeline import Context

ConfigLike = KdcConfig | dict | str | Path  # a dict: model.yaml's content, paths relative to cwd
TargetLike = HardwareProfile | str | Path | None  # a name, alias or YAML path; None: host
# onnxruntime (1.32) otherwise writes telemetry state to ~/.cache/Microsoft and $TMPDIR/.ses and
# may try to upload it; it reads this when first imported, and every kdc import passes here first
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def _config(config: ConfigLike) -> KdcConfig:
    if isinstance(config, dict):
        return parse_config(config, source="<dict config>")
    if isinstance(config, KdcConfig):
        return config
    return load_config(_path_arg(config, "config", "a path to model.yaml, a dict or a KdcConfig"))


def _profile(target: TargetLike) -> HardwareProfile:
    if isinstance(target, HardwareProfile):
        return target
    what = "a profile name, alias or YAML path, or a HardwareProfile"
    return load_profile(str(_path_arg("host" if target is None else target, "target", what)))


def _path_arg(value: object, name: str, what: str) -> str | Path:
    """A str or Path argument of the API as given; anything else is a UserError naming it."""
    if isinstance(value, str | os.PathLike):
        return value if isinstance(value, str) else Path(value)
    raise UserError(f"is {type(value).__name__} {value!r:.60}", field=name, fix=f"pass {what}")


def default_run_dir(cfg: KdcConfig) -> Path:
    return Path("runs") / cfg.name


def open_run(
    config: ConfigLike,
    target: TargetLike = "host",
    out: str | Path | None = None,
    *,
    quiet: bool = False,
) -> Context:
    """A pipeline Context for a config, target and run directory."""
    from kdc.pipeline import Context

    cfg = _config(config)
    profile = _profile(target)
    run = RunDir(out or default_run_dir(cfg))
    run.check_writable()
    width = None if sys.stdout.isatty() else 160
    is_file = isinstance(target, str | Path) and Path(target).suffix in (".yaml", ".yml")
    return Context(
        cfg,
        profile,
        run,
        Console(width=width, soft_wrap=True),
        quiet=quiet,
        target_file=str(Path(target).resolve()) if is_file else None,
    )


def _flags(**flags: object) -> None:
    """Refuse a flag that is not a bool ("no" would count as true)."""
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise UserError(
                f"is {type(flag).__name__} {flag!r:.40}", field=name, fix="pass True or False"
            )


def _run(
    config: ConfigLike,
    target: TargetLike,
    out: str | Path | None,
    stages: tuple[str, ...] | None,
    resume: bool,
    quiet: bool,
) -> dict:
    from kdc.pipeline import run_stages
    from kdc.preflight import check_config, check_target, config_warnings, target_warnings

    _flags(resume=resume, quiet=quiet)
    cfg = _config(config)
    check_config(cfg)
    profile = _profile(target)
    check_target(cfg, profile)
    root = _run_root(out or default_run_dir(cfg))
    replaced = _replaced_run(root, cfg, profile, resume=resume or stages is not None)
    existed = root.exists()
    created = [d for d in root.absolute().parents if not d.exists()]  # e.g. runs/, made for it
    was_empty = not existed or not any(p.name != LOCK for p in root.iterdir())
    ctx = open_run(cfg, target, root, quiet=quiet)
    ctx.log(f"kdc: [bold]{ctx.cfg.name}[/bold] → {ctx.profile.name}, run dir {ctx.run.root}")
    for note in [*config_warnings(cfg), *target_warnings(cfg, ctx.profile)]:
        ctx.warn(note)
    try:
        with ctx.run.lock():  # another kdc process on this run directory is refused
            run_stages(ctx, resume=resume, only=stages, replacing=replaced)
    except RunBusy:  # what is in the directory is the other process's
        raise
    except UserError as e:
        if was_empty and not _any_stage_done(ctx.run):
            _clear(ctx.run.root, remove=not existed)  # bad input: leave no half-started run
            for d in created:  # innermost first
                with contextlib.suppress(OSError):
                    d.rmdir()  # only while empty
        raise e.located(cfg.source_file) from None
    report = ctx.run / "report.json"
    if not report.is_file():
        return ctx.run.manifest()
    result = read_json(report)
    if stages is None and "report" not in ctx.ran:  # a resume of a finished run: its verdict
        from kdc.deploy.report import console_summary

        ctx.console.print(console_summary(result, brief=quiet))
    return result


def _run_root(out: str | Path) -> Path:
    """`--out` as a Path, refused when it is a file, or a folder with contents kdc did not write
    (no manifest.json; hidden files and lost+found aside): kdc replaces the stage folders it
    writes (build/, export/ …) and its report files."""
    root = check_run_root(_path_arg(out, "out", "a directory path"))
    foreign = root.is_dir() and not (root / "manifest.json").is_file()
    if foreign and any(p.name[0] != "." and p.name != "lost+found" for p in root.iterdir()):
        raise UserError(
            f"{root} is not empty and not a kdc run directory (no manifest.json): kdc replaces "
            "the stage folders it writes (build/, export/ …) and report files",
            field="out",
            fix="pass a new or empty directory, or one `kdc compress` wrote",
        )
    return root


def _replaced_run(
    root: Path, cfg: KdcConfig, profile: HardwareProfile, *, resume: bool
) -> str | None:
    """A note when `root` holds another config's run (by `name`), or a finished run for another
    target, which this run replaces; a UserError when it is another config's and the command
    would `resume` it (or run one stage of it)."""
    if not (root / "manifest.json").is_file():
        return None
    m = RunDir(root).manifest()
    held = m.get("config")
    name = held.get("name") if isinstance(held, dict) else None
    if name and name != cfg.name:
        if resume:
            raise UserError(
                f"{root} holds the run '{name}', not '{cfg.name}': no stage of it is this "
                "config's to resume from",
                field="out",
                fix="pass another output directory, or compress without resuming to replace "
                "that run",
            )
        return f"{root} holds the run '{name}': this run of '{cfg.name}' replaces it"
    if (made_by := _run_config_file(root, m)) and made_by != _config_file(cfg) and not resume:
        return (
            f"{root} holds the run of {made_by}: this run of {cfg.source_file} replaces it "
            "(pass another --out to keep both)"
        )
    target = m.get("target")
    if target and target != profile.name and (root / "report.json").is_file():
        return (
            f"{root} holds the run for {target}: this run for {profile.name} replaces its "
            "report (pass another --out to keep a run per target)"
        )
    return None


def _config_file(cfg: KdcConfig) -> Path | None:
    """The config's file, resolved; None for one given as a dict."""
    return None if cfg.source_file.startswith("<") else Path(cfg.source_file).resolve()


def _run_config_file(root: Path, manifest: dict) -> Path | None:
    """The config file a run was made from (`_config_source`), resolved; None when not recorded,
    or a dict's."""
    file = manifest.get("config_file")
    if not isinstance(file, str) or file.startswith("<"):
        return None
    return Path(_config_source(root, manifest)[1]).resolve()


def _config_source(run: Path, m: dict) -> tuple[Path, str]:
    """The folder and file a run's config came from, by its manifest: the folder recorded, or
    found from the run where the checkout moved with the run in it (a CI runner's own work
    path); a relative file (as given, from another cwd) in that folder."""
    base = Path(m.get("config_base_dir", "."))
    moved = run / m.get("config_base_dir_from_run", "")
    if not base.is_dir() and "config_base_dir_from_run" in m and moved.is_dir():
        base = moved
    source = m.get("config_file", str(run))
    if "config_file" in m and not Path(source).is_absolute():
        source = str(base / Path(source).name)
    return base, source


def _any_stage_done(run: RunDir) -> bool:
    return any(r.get("status") == "done" for r in run.manifest().get("stages", {}).values())


def _clear(root: Path, *, remove: bool) -> None:
    """Remove what a run wrote into a directory that was empty before it (and the directory
    itself with `remove`: the run created it)."""
    if remove:
        shutil.rmtree(root, ignore_errors=True)
        return
    for p in root.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def compress(
    config: ConfigLike,
    target: TargetLike = "host",
    out: str | Path | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> dict:
    """Run search → distill → export → build → verify → report; return report.json's content."""
    return _run(config, target, out, None, resume, quiet)


def search(
    config: ConfigLike,
    target: TargetLike = "host",
    out: str | Path | None = None,
    *,
    quiet: bool = False,
) -> dict:
    """Run the search stage alone; returns the manifest."""
    return _run(config, target, out, ("search",), True, quiet)


def distill(
    config: ConfigLike,
    target: TargetLike = "host",
    out: str | Path | None = None,
    *,
    quiet: bool = False,
) -> dict:
    """Run the distill stage alone (search done); returns the manifest."""
    return _run(config, target, out, ("distill",), True, quiet)


def export(
    config: ConfigLike,
    target: TargetLike = "host",
    out: str | Path | None = None,
    *,
    quiet: bool = False,
) -> dict:
    """Run the export stage alone (distill done); returns the manifest."""
    return _run(config, target, out, ("export",), True, quiet)


def build(
    config: ConfigLike,
    target: TargetLike = "host",
    out: str | Path | None = None,
    *,
    quiet: bool = False,
) -> dict:
    """Run the build stage alone (export done); returns the manifest."""
    return _run(config, target, out, ("build",), True, quiet)


def config_of_run(run_dir: str | Path) -> KdcConfig:
    """The config a run directory was made with (from its manifest)."""
    run = Path(_path_arg(run_dir, "run_dir", "the run directory `kdc compress` wrote"))
    m = RunDir.existing(run).manifest()
    if not isinstance(m.get("config"), dict):
        raise UserError(
            "the manifest holds no config: this run never got past its start",
            source=str(run / "manifest.json"),
            fix="run `kdc compress` again into this directory",
        )
    base, source = _config_source(run, m)
    return parse_config(m["config"], source=source, base_dir=str(base))


def _own_target(run_dir: Path, manifest: dict) -> str:
    """The target a run was compressed for: its name, or the profile YAML it was given (where
    that file is gone, the copy in the run's device bundle)."""
    own = manifest.get("target_file")
    if not own or Path(own).is_file():
        return own or manifest.get("target", "host")
    copy = run_dir / "build" / "bundle" / "profile.yaml"
    if copy.is_file():
        return str(copy)
    raise UserError(
        f"the run was compressed for the profile YAML {own}, which is gone",
        field="target",
        fix="pass that profile's YAML (or a copy of it) as the target",
    )


def verify(
    run_dir: str | Path,
    target: TargetLike = None,
    *,
    quiet: bool = False,
    device_results: str | Path | None = None,
) -> dict:
    """Re-run verify and report on a finished run, for the target it was built for or another
    (the manifest keeps the former, and `verified_for` the latter; the report's `target` is
    the one verified for). With
    `device_results`, the TensorRT engine's latency is what the device measured with the bundle;
    results that do not belong to the run are refused before anything is written."""
    _flags(quiet=quiet)
    cfg = config_of_run(run_dir)
    manifest = read_json(Path(run_dir) / "manifest.json")
    built_for = manifest.get("target", "host")
    ctx = open_run(cfg, target or _own_target(Path(run_dir), manifest), run_dir, quiet=quiet)
    with ctx.run.lock():  # device results are read and recorded with the run held
        return _verify(ctx, run_dir, built_for, device_results)


def _verify(
    ctx: Context, run_dir: str | Path, built_for: str, device_results: str | Path | None
) -> dict:
    from kdc.pipeline import require_stage, run_stages
    from kdc.preflight import check_dla_target

    cfg = ctx.cfg
    check_dla_target(cfg, ctx.profile)  # another target may have no such DLA core
    if device_results is not None:
        from kdc.stages.verify import device_figures

        ctx.device_results = Path(_path_arg(device_results, "device_results", "a directory"))
        if not ctx.device_results.is_dir():
            raise UserError(
                f"{device_results} is a file, not the results directory"
                if ctx.device_results.is_file()
                else f"{device_results}: directory not found",
                field="device_results",
                fix="pass the results/ the bundle wrote",
            )
        require_stage(ctx, "build")
        device_figures(ctx, read_json(ctx.run / "build" / "engines.json"))  # refused: untouched
    run_stages(ctx, resume=True, only=("verify", "report"), trust_upstream=True)
    if ctx.device_results is not None:  # a later verify stage (a --resume) reads them again
        given = {"path": str(ctx.device_results.resolve()), "target": ctx.profile.name}
        ctx.run.update_manifest(device_results=given)
    if ctx.profile.name != built_for:  # said even with --quiet: the report changed meaning
        ctx.console.print(
            f"report.* now describe the run's engines verified for {ctx.profile.name} (built for "
            f"{built_for}; `kdc verify {run_dir}` verifies them for it again)",
            markup=False,
        )
    return read_json(ctx.run / "report.json")


def plan(
    config: ConfigLike,
    target: TargetLike = "host",
    out: str | Path | None = None,
    *,
    resume: bool = False,
) -> dict:
    """The resolved plan `--dry-run` prints: stages, teacher, data sizes, target, the student
    settings that apply to the teacher, constraints, and what the run would warn of; what the
    run would refuse (with `resume`: another config's run in `out`) is refused."""
    from kdc.pipeline import STAGE_NAMES, resume_plan
    from kdc.preflight import (
        builds_int8,
        check_config,
        check_data,
        check_target,
        config_warnings,
        planned_student,
        target_warnings,
    )

    _flags(resume=resume)
    cfg = _config(config)
    check_config(cfg)
    profile = _profile(target)
    check_target(cfg, profile)
    run_dir = _run_root(out or default_run_dir(cfg))
    ds = check_data(cfg)
    c = cfg.constraints.model_dump(exclude_none=True)
    for key in ("latency_budget_ms", "max_memory_mb"):  # the profile's defaults fill the gaps
        if key not in c and getattr(profile.defaults, key):
            c[key] = getattr(profile.defaults, key)
    resolved = {
        "name": cfg.name,
        "task": cfg.task,
        "stages": list(STAGE_NAMES),
        "teacher": cfg.teacher.model_dump(exclude_none=True, exclude_defaults=True),
        "data": ds.summary(),
        "target": {"name": profile.name, "kind": profile.kind, "engines": profile.runtime.engines},
        "student": planned_student(cfg),
        "quantize": cfg.quantize.precision
        + (f" ({cfg.quantize.method})" if builds_int8(cfg) else ""),
        "constraints": c,
        "run_dir": str(run_dir),
    }
    if build := cfg.build.model_dump(exclude_none=True, exclude_defaults=True):
        resolved["build"] = build  # what the config sets (engines, max_batch, softmax floor)
    replaced = _replaced_run(run_dir, cfg, profile, resume=resume)
    if resume and (run_dir / "manifest.json").is_file():  # what --resume would redo
        resolved["resume"] = resume_plan(cfg, profile, RunDir(run_dir))
    notes = [*config_warnings(cfg), *target_warnings(cfg, profile), *ds.notes, replaced]
    if notes := [n for n in notes if n]:
        resolved["warnings"] = notes
    return resolved
