"""Distillation's resumable training state: one file per run, valid only for its inputs."""

from __future__ import annotations

from pathlib import Path

import torch

from kdc.rundir import atomic_path


class Checkpoint:
    """`<dir>/last.pt`: the training state after each finished epoch (tensors and plain values
    only, read with weights_only=True), valid only for the run inputs it was saved with (`key`)."""

    def __init__(self, directory: Path, key: str) -> None:
        self.path = Path(directory) / "last.pt"
        self.key = key

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged checkpoint is only a lost shortcut
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({**state, "key": self.key}, tmp)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
