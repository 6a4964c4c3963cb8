"""glibc malloc tuning for training: keep freed memory in the process instead of returning it.

PyTorch frees and reallocates its large activation and gradient buffers every step; glibc serves
them with mmap and gives them back to the OS on free, so each step pays page faults for memory it
had a moment ago. Switching off mmap for allocations and heap trimming keeps those pages mapped
(the same as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647, set from inside the process).
Linux/glibc only; KDC_MALLOC_TUNING=0 turns it off, and a user's own MALLOC_* variables or
glibc.malloc tunables leave malloc as they set it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Callable, Mapping

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
OPT_OUT = "KDC_MALLOC_TUNING"


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None off Linux/glibc."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def user_tuned(env: Mapping[str, str]) -> bool:
    """Whether the environment tunes malloc itself (or opts out of kdc's tuning)."""
    return (
        env.get(OPT_OUT, "").strip().lower() in ("0", "false", "no", "off")
        or any(k.startswith("MALLOC_") for k in env)
        or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")
    )


def tune_for_training() -> bool:
    """Keep freed memory mapped for the rest of the process; True if glibc took the settings."""
    if user_tuned(os.environ):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return all([mallopt(param, value) == 1 for param, value in SETTINGS])
