"""Free-space checks before a stage writes large files, so a full disk is a clear user error."""

from __future__ import annotations

import shutil
from pathlib import Path

from kdc.errors import UserError

MB = 1 << 20
ENGINE_OVERHEAD_BYTES = 50 * MB  # temporaries of graph optimisation and quantization
ENGINE_SIZE_FACTOR = 4  # FP32 optimised + INT8 + pre-processed copy + a bundle


def free_bytes(path: Path | str) -> int:
    """Bytes free for an unprivileged writer on the file system holding `path` (or its nearest
    existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def engine_bytes_needed(onnx_path: Path | str) -> int:
    """What building engines from an ONNX file may write: ~4× its size plus 50 MB."""
    return ENGINE_SIZE_FACTOR * Path(onnx_path).stat().st_size + ENGINE_OVERHEAD_BYTES


def distill_bytes_needed(params: int) -> int:
    """What distilling a student of `params` float32 parameters may write: its checkpoint (weights,
    AdamW's two moments, and the previous checkpoint until the new one replaces it) and the saved
    student, plus 50 MB."""
    return 7 * 4 * params + ENGINE_OVERHEAD_BYTES


def require_free(path: Path | str, bytes_needed: int, what: str) -> None:
    """Raise UserError "needs N MB free in DIR, has M MB" when `path` lacks `bytes_needed`."""
    have = free_bytes(path)
    if have < bytes_needed:
        raise UserError(
            f"{what} needs {bytes_needed / MB:.0f} MB free in {path}, has {have / MB:.0f} MB",
            fix="free some space or pass another run directory with --out",
        )
