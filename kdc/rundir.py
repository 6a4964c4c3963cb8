"""Run directory: atomic writes, sha256 of artifacts, and the manifest that makes resume work."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from kdc.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, a run directory is not guarded
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
LOCK = ".kdc.lock"  # held (flock) by the process writing a run; hidden, not a `.*.tmp`
# hard links of a finished run's files while a command that may replace them starts; a `.*.tmp`,
# so what a killed command left goes with the other temporaries
PREVIOUS = ".kdc-previous.tmp"
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "nncf", "torch-pruning", "optimum")
_UMASK = os.umask(0)
os.umask(_UMASK)


class RunBusy(UserError):
    """Another process holds the run directory's lock (RunDir.lock)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are shared files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds
    (the old one is moved aside first, and put back if interrupted before the new one took its
    place, so an interruption leaves one of the two)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    aside = tmp.with_name(f"{tmp.name[: -len('.tmp')]}.old.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; artifacts are shared files
        if path.exists() or path.is_symlink():
            os.replace(path, aside)
        os.replace(tmp, path)
    finally:
        if not (path.exists() or path.is_symlink()) and (aside.exists() or aside.is_symlink()):
            os.replace(aside, path)  # interrupted between the two moves: the old one back
        for left in (tmp, aside):
            if left.is_symlink():
                left.unlink()
            elif left.exists():
                shutil.rmtree(left, ignore_errors=True)


@contextlib.contextmanager
def writable(path: Path | str, what: str, field: str, example: str) -> Iterator[None]:
    """Turn a failure to write `path` (a directory, no permission, no space) into a UserError
    naming it and the option it came from."""
    try:
        yield
    except OSError as e:
        raise UserError(
            f"cannot write the {what} ({e.strerror or e})",
            source=str(path),
            field=field,
            fix=f"pass a file path you can write to, e.g. {example}",
        ) from None


def files_of(path: Path) -> list[Path]:
    """An output's files: `path` itself, or every file under a directory (a device bundle)."""
    return [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())


def write_text(path: Path | str, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_number(value: float) -> float | None:
    """`value` as a float, or None where it is NaN or infinite (which `json.dumps` writes as bare
    NaN/Infinity tokens that strict JSON readers refuse)."""
    return float(value) if math.isfinite(value) else None


def write_json(path: Path | str, obj: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path | str, rows: list[dict]) -> Path:
    """Write JSON lines atomically."""
    return write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: Path | str) -> list[dict]:
    """The rows of a JSON Lines file kdc wrote (blank lines skipped)."""
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_json(path: Path | str) -> Any:
    """A JSON file's content; a damaged file is a UserError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"not valid JSON ({str(e).splitlines()[0][:80]})",
            source=str(path),
            fix="the file is damaged: restore it, or delete it and run again",
        ) from None


def library_versions() -> dict[str, str]:
    """Python's and the installed LIBRARIES' versions, as the manifest and report.json record."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_run_root(root: Path | str) -> Path:
    """`root` as a Path; a UserError if it exists and is not a directory (what `--out` names)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(
            f"{root} exists and is not a directory",
            field="out",
            fix="pass a directory for the run (it is created if missing)",
        )
    return root


class RunDir:
    """A run directory with a manifest recording, per stage, its input hash, outputs and metrics."""

    def __init__(self, root: Path | str) -> None:
        self.root = check_run_root(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot create the run directory {self.root} ({e.strerror})",
                field="out",
                fix="pass a directory you can write to",
            ) from None

    @classmethod
    def existing(cls, root: Path | str) -> RunDir:
        """A run directory kdc wrote (it has a manifest); a UserError naming `root` otherwise."""
        if not (Path(root) / MANIFEST).is_file():
            raise UserError(
                f"not a kdc run directory (no {MANIFEST})",
                source=str(root),
                fix="pass the directory `kdc compress` wrote (runs/<name>)",
            )
        return cls(root)

    def __truediv__(self, rel: str) -> Path:
        return self.root / rel

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"stages": {}}
        m = read_json(self.manifest_path)
        stages = m.get("stages", {}) if isinstance(m, dict) else None
        if not isinstance(stages, dict) or not all(
            isinstance(r, dict) and isinstance(r.get("outputs", {}), dict) for r in stages.values()
        ):
            raise UserError(
                "not a kdc manifest (an object with a 'stages' object of stage records)",
                source=str(self.manifest_path),
                fix="the file is damaged: restore it, or run `kdc compress` into a new directory",
            )
        return m

    def update_manifest(self, **fields: Any) -> None:
        m = self.manifest()
        m.update(fields)
        try:
            write_json(self.manifest_path, m)
        except OSError as e:  # the first write of a run: a directory it cannot write in
            raise self._unwritable(e) from None

    def check_writable(self) -> None:
        """A UserError now, before a command starts, if files cannot be made in the run
        directory (its permissions, a read-only or full file system)."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".kdc-probe.", suffix=".tmp", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise self._unwritable(e) from None

    def _unwritable(self, e: OSError) -> UserError:
        return UserError(
            f"cannot write in the run directory ({e.strerror})",
            source=str(self.root),
            fix="make it writable (kdc compress: or pass another --out)",
        )

    def remove_stale_temp(self) -> list[Path]:
        """Delete the temporaries (`.<name>.*.tmp`) a killed run left beside its artifacts; they
        were never renamed into place. Only while no other process writes this run."""
        stale = sorted(self.root.rglob(".*.tmp"), key=lambda p: len(p.parts), reverse=True)
        for p in stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return stale

    def keep_previous(self) -> bool:
        """Keep the run's files as they are (hard links in PREVIOUS, copies where the file system
        has none; kdc replaces files, never rewrites one in place) for `restore_previous`, where
        a stage of it finished; False (nothing kept) where none did, or they could not be."""
        stages = self.manifest().get("stages", {}).values()
        if not any(r.get("status") == "done" for r in stages):
            return False
        skip = {LOCK, PREVIOUS}
        try:
            shutil.copytree(
                self.root,
                self.root / PREVIOUS,
                symlinks=True,
                ignore=lambda d, names: [n for n in names if n in skip or n.endswith(".tmp")],
                copy_function=_link_or_copy,
            )
        except OSError:  # no room for copies: the command runs without
            self.drop_previous()
            return False
        return True

    def restore_previous(self) -> None:
        """Put the files `keep_previous` kept back in place of what the run holds now."""
        kept = self.root / PREVIOUS
        for p in self.root.iterdir():
            if p.name not in (LOCK, PREVIOUS):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for p in kept.iterdir():
            os.replace(p, self.root / p.name)
        kept.rmdir()

    def drop_previous(self) -> None:
        """Forget the files `keep_previous` kept (the run replaced them)."""
        shutil.rmtree(self.root / PREVIOUS, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process while it writes it: a second kdc process on
        the same run (another compress, a stage alone, verify, bundle) is refused instead of
        deleting this one's temporaries and interleaving its manifest writes. Re-entrant within
        a process; the kernel releases it when the process dies (SIGKILL included)."""
        key = str(self.root.resolve())
        if fcntl is None or key in _HELD:
            _HELD[key] = _HELD.get(key, 0) + 1
            try:
                yield
            finally:
                _HELD[key] -= 1
                if not _HELD[key]:
                    del _HELD[key]
            return
        try:
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as e:
            raise self._unwritable(e) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(fd) from None
            except OSError:  # a file system without locks (some network mounts): unguarded
                pass
            with contextlib.suppress(OSError):  # the pid only names the writer
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            _HELD[key] = 1
            try:
                yield
            finally:
                del _HELD[key]
        finally:
            os.close(fd)  # releases the lock

    def _busy(self, fd: int) -> RunBusy:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return RunBusy(
            f"another kdc process{f' (pid {pid})' if pid else ''} is writing this run directory",
            source=str(self.root),
            fix="wait for it to finish (or stop it), or pass another --out",
        )

    def writer(self) -> str | None:
        """The pid (as written) of a process holding the run's lock, or None when none does."""
        path = self.root / LOCK
        if fcntl is None or not path.is_file() or str(self.root.resolve()) in _HELD:
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        except OSError:  # no locks on this file system
            return None
        finally:
            os.close(fd)
        return None

    def stage(self, name: str) -> dict | None:
        return self.manifest().get("stages", {}).get(name)

    def is_done(self, name: str, input_hash: str) -> bool:
        """True when the stage finished with this input hash and its outputs are intact."""
        rec = self.stage(name)
        if not rec or rec.get("status") != "done" or rec.get("input_hash") != input_hash:
            return False
        return not self.verify_outputs(name)

    def verify_outputs(self, name: str) -> list[str]:
        """Relative paths of a stage's outputs that are missing or whose sha256 changed."""
        rec = self.stage(name) or {}
        bad = []
        for rel, digest in rec.get("outputs", {}).items():
            p = self.root / rel
            if not p.is_file() or sha256_file(p) != digest:
                bad.append(rel)
        return bad

    def mark_started(
        self,
        name: str,
        input_hash: str,
        upstream: str = "",
        inputs: str = "",
        upstream_outputs: str = "",
    ) -> None:
        """Record that stage `name` runs, from what it reads of the earlier stage's outputs (hash
        `upstream`; `upstream_outputs`: of all of them) and the teacher and data files of
        fingerprint `inputs`.
        The report the run wrote before (its recorded outputs, no other file) no longer
        describes it, so it goes (`kdc check` must not read it as this run's) and its record
        says `stale`."""
        m = self.manifest()
        report = m.get("stages", {}).get("report")
        if name != "report" and report:
            for rel in report.get("outputs", {}):
                (self.root / rel).unlink(missing_ok=True)
            m["stages"]["report"] = {"status": "stale", "reason": f"stage '{name}' ran after it"}
        m.setdefault("stages", {})[name] = {
            "status": "running",
            "input_hash": input_hash,
            "upstream": upstream,
            "upstream_outputs": upstream_outputs,
            "inputs": inputs,
            "started": now_iso(),
        }
        write_json(self.manifest_path, m)

    def _digests(self, outputs: Sequence[Path]) -> dict[str, str]:
        """{path relative to the run: sha256} of a stage's output files (its record)."""
        return {str(Path(p).relative_to(self.root)): sha256_file(Path(p)) for p in outputs}

    def confirm_upstream(self, name: str, upstream_outputs: str) -> None:
        """A finished stage found up to date for the earlier stage's outputs now (of hash
        `upstream_outputs`, e.g. a search for another target that chose the same student):
        recorded, so `outdated` does not take it for one built from older outputs."""
        m = self.manifest()
        rec = m.get("stages", {}).get(name)
        if rec is not None and rec.get("upstream_outputs") != upstream_outputs:
            rec["upstream_outputs"] = upstream_outputs
            write_json(self.manifest_path, m)

    def mark_failed(self, name: str, error: str, outputs: Sequence[Path] = ()) -> None:
        """A stage that stopped on an error: not done, and not left looking as if running;
        `outputs`: what it wrote nonetheless (a failed search's report)."""
        m = self.manifest()
        rec = m.setdefault("stages", {}).setdefault(name, {})
        rec.update(status="failed", error=error, finished=now_iso())
        if outputs:
            rec["outputs"] = self._digests(outputs)
        write_json(self.manifest_path, m)

    def mark_done(
        self, name: str, input_hash: str, outputs: list[Path], metrics: dict, wall_s: float
    ) -> dict:
        m = self.manifest()
        running = m.get("stages", {}).get(name, {})
        rec = {
            "status": "done",
            "input_hash": input_hash,
            **{
                k: running[k]
                for k in ("upstream", "upstream_outputs", "inputs", "started")
                if k in running
            },
            "finished": now_iso(),
            "wall_s": round(wall_s, 3),
            "outputs": self._digests(outputs),
            "metrics": metrics,
        }
        m.setdefault("stages", {})[name] = rec
        write_json(self.manifest_path, m)
        return rec

    def rerecord(self, name: str, directory: Path) -> None:
        """Replace stage `name`'s recorded outputs under `directory` (rewritten since, as
        `kdc bundle` rewrites the build's own bundle) by the files there now."""
        m = self.manifest()
        rec = m.get("stages", {}).get(name)
        rel = directory.relative_to(self.root).as_posix() + "/"
        if not rec or not any(k.startswith(rel) for k in rec.get("outputs", {})):
            return
        kept = {k: v for k, v in rec["outputs"].items() if not k.startswith(rel)}
        files = files_of(directory)
        rec["outputs"] = {**kept, **self._digests(files)}
        write_json(self.manifest_path, m)

    def output_hash(self, name: str) -> str:
        """Hash of a finished stage's outputs: the input hash of the stages after it."""
        rec = self.stage(name) or {}
        return sha256_json(rec.get("outputs", {}))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


_HELD: dict[str, int] = {}  # run directories this process holds the lock of (depth)


def target_flag(manifest: dict) -> str:
    """` --target T` for the target a run is for (its profile YAML, if one), or '' for host,
    the commands' default: what a command the run suggests must pass to keep its target."""
    given = manifest.get("target_file") or manifest.get("target")
    return f" --target {given}" if given and given != "host" else ""


def size_mb(path: Path) -> float:
    """A file's size in MB (10^6 bytes), to 4 decimals: what reports give as size_mb."""
    return round(path.stat().st_size / 1e6, 4)
