"""glibc malloc tuning: applied when training starts, on glibc only, unless the user opts out or
tunes malloc themselves."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
import yaml
from tiny import write_yaml

from kdc import allocator, api

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def calls(monkeypatch):
    """mallopt replaced by a recorder; the environment cleared of malloc settings."""
    made: list[tuple[int, int]] = []
    monkeypatch.setattr(allocator, "_mallopt", lambda: lambda p, v: made.append((p, v)) or 1)
    for key in [k for k in allocator.os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(allocator.OPT_OUT, raising=False)
    return made


def test_the_distill_stage_tunes_malloc_and_search_does_not(cnn_project, tmp_path, calls):
    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(cnn_project.parent / cfg["teacher"]["weights"])
    cfg["distill"]["epochs"] = 0
    config, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    api.search(config, "host", run, quiet=True)
    assert calls == []
    api.distill(config, "host", run, quiet=True)
    assert calls == list(allocator.SETTINGS)


@pytest.mark.parametrize(
    "env",
    [
        {"KDC_MALLOC_TUNING": "0"},
        {"KDC_MALLOC_TUNING": "off"},
        {"MALLOC_ARENA_MAX": "2"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=1"},
    ],
)
def test_an_opt_out_or_the_users_own_malloc_settings_leave_malloc_alone(env, monkeypatch, calls):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert allocator.tune_for_training() is False
    assert calls == []


def test_unrelated_settings_still_tune(monkeypatch, calls):
    monkeypatch.setenv("KDC_MALLOC_TUNING", "1")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
    assert allocator.tune_for_training() is True
    assert calls == list(allocator.SETTINGS)


def test_without_glibc_nothing_is_done(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator._mallopt() is None
    assert allocator.tune_for_training() is False


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_glibc_then_serves_large_blocks_from_the_heap_not_mmap():
    """A 64 MB block is mmapped (and unmapped on free) by default; tuned, it comes from the
    heap, whose pages stay mapped for the next step."""
    probe = textwrap.dedent(
        """
        import ctypes, sys
        from kdc.allocator import tune_for_training
        if sys.argv[1] == "tuned":
            assert tune_for_training()
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        p = libc.malloc(64 << 20)
        heap = [l for l in open("/proc/self/maps") if l.rstrip().endswith("[heap]")]
        lo, hi = (int(x, 16) for x in heap[0].split()[0].split("-")) if heap else (0, 0)
        print(lo <= p < hi)
        """
    )
    env = {k: v for k, v in allocator.os.environ.items() if not k.startswith("MALLOC_")}
    env.pop(allocator.OPT_OUT, None)
    env.pop("GLIBC_TUNABLES", None)

    def in_heap(mode: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", probe, mode], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert in_heap("default") == "False"
    assert in_heap("tuned") == "True"
