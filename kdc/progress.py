"""Progress of a long step: a live bar on a terminal, a line now and then in a log (CI)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Advance = Callable[..., None]  # advance(n=1, total=None, **fields)
LINE_EVERY_S = 30.0  # a log's progress lines at most this often


def _info(fields: dict[str, Any]) -> str:
    """`fields` as `name=value` words, floats to 4 significant digits."""
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
    )


@contextlib.contextmanager
def progress(console: Console, description: str, total: int | None) -> Iterator[Advance]:
    """Yields `advance(n=1, total=None, **fields)`: `n` more done (of `total`, where it is
    given anew), `fields` shown beside (kept until given again). On a terminal, a bar; else
    (a CI log, a file) a line every `LINE_EVERY_S` while it lasts, so a long step is not silent."""
    if not console.is_terminal:
        yield _lines(console, description, total)
        return
    cols = (
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*cols, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, total: int | None = None, **fields: Any) -> None:
            info = {"info": _info(fields)} if fields else {}
            bar.update(task, advance=n, total=total, **info)

        yield advance


def _lines(console: Console, description: str, total: int | None) -> Advance:
    """`advance` for a console that is no terminal: it prints how far the step got, with the
    time since it began, once `LINE_EVERY_S` has passed since the last line."""
    start = last = time.monotonic()
    state: dict[str, Any] = {"done": 0, "total": total, "info": ""}

    def advance(n: int = 1, total: int | None = None, **fields: Any) -> None:
        nonlocal last
        state["done"] += n
        state["total"] = total if total is not None else state["total"]
        state["info"] = _info(fields) if fields else state["info"]
        now = time.monotonic()
        if now - last < LINE_EVERY_S:
            return
        last = now
        of = f"/{state['total']}" if state["total"] is not None else ""
        info = f" {state['info']}" if state["info"] else ""
        elapsed = time.strftime("%H:%M:%S", time.gmtime(now - start))
        console.print(f"  {description}: {state['done']}{of}{info} ({elapsed})", markup=False)

    return advance
