"""A resume reuses an artifact only while what it was made from is unchanged: the teacher-logits
cache follows the training rows and the teacher."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np

from kdc.config import parse_config
from kdc.rundir import RunDir
from kdc.stages.distill import teacher_logits

ROWS = {0: np.arange(8.0), 1: np.arange(8.0)[::-1].copy()}  # as many rows, another split


def _scaled(scale: int) -> object:
    """A teacher's forward_numpy: its inputs times `scale`, one output per row."""
    return lambda x, progress: scale * x["pixel_values"][:, None]


def _ctx(run: RunDir, seed: int, **teacher: object) -> SimpleNamespace:
    """What `teacher_logits` reads of a run whose training rows the split `seed` drew, with a
    teacher that scales them by 2 plus its number of `kwargs`."""
    cfg = parse_config(
        {
            "name": "t",
            "task": "image-classification",
            "seed": seed,
            "teacher": {"name": "resnet18", **teacher},
            "data": {"source": "sklearn:digits"},
        }
    )
    x, scale = {"pixel_values": ROWS[seed]}, 2 + len(cfg.teacher.kwargs)
    return SimpleNamespace(
        cfg=cfg,
        run=run,
        inputs_hash="the same teacher and data files",
        dataset=SimpleNamespace(train=ROWS[seed]),
        encode=lambda split: x,
        teacher=SimpleNamespace(forward_numpy=_scaled(scale)),
        progress=lambda description, total: contextlib.nullcontext(lambda n=1, **kw: None),
    )


def test_cached_teacher_logits_are_not_reused_for_other_training_rows(tmp_path):
    """Another seed draws other training rows (no eval file, no data.split_seed), as many: the
    teacher's logits on the rows it drew, not the cached ones of the first seed's rows."""
    run = RunDir(tmp_path / "run")
    assert np.array_equal(teacher_logits(_ctx(run, 0))[:, 0], 2 * ROWS[0])
    assert np.array_equal(teacher_logits(_ctx(run, 1))[:, 0], 2 * ROWS[1])
    assert len(list((run / "distill").glob("teacher_logits*.npy"))) == 1


def test_cached_teacher_logits_follow_the_teacher_section(tmp_path):
    """A teacher built with other kwargs (no file of it changed) is run again."""
    run = RunDir(tmp_path / "run")
    teacher_logits(_ctx(run, 0))
    other = teacher_logits(_ctx(run, 0, kwargs={"num_classes": 10}))
    assert np.array_equal(other[:, 0], 3 * ROWS[0])
