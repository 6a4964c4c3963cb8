"""Ctrl-C and SIGTERM during a pipeline run: stages are stopped, never finished half-way."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from kdc.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; a CI job's timeout or cancel, `kill`


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[Callable[[], bool]]:
    """Ctrl-C or SIGTERM finishes nothing half-way: either raises KeyboardInterrupt (even where
    SIGINT was ignored, as in a background job), which leaves the pipeline as Interrupted for the
    CLI to report (exit 128 + the signal). Yields `pressed()`: a library's bare `except:`
    (torch-pruning's tracing has one) may swallow the exception, so a stage that returns after
    the signal is not marked done either."""
    pressed: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        pressed.append(signum)
        raise KeyboardInterrupt

    try:
        old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: bool(pressed)
    except KeyboardInterrupt:
        raise Interrupted(pressed[0] if pressed else signal.SIGINT) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
