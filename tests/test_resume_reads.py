"""A resume reuses an artifact only while what it was made from is unchanged: the teacher-logits
cache follows the training rows and the teacher, build follows distill's QAT graph."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

from kdc.config import parse_config
from kdc.pipeline import upstream_hash
from kdc.rundir import RunDir, write_json
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


def _build_upstream(run: RunDir, qat: str | None) -> str:
    """Build's upstream hash where export's outputs are the same and distill made QAT graph
    `qat` (its digest; None: no QAT)."""
    outputs = {"distill/student/model.safetensors": "float student"}
    if qat:
        outputs["distill/student_qat.onnx"] = qat
    stages = {
        "distill": {"status": "done", "outputs": outputs},
        "export": {"status": "done", "outputs": {"export/model.onnx": "exported"}},
    }
    write_json(run.manifest_path, {"stages": stages})
    return upstream_hash(run, "build")


def test_build_runs_again_for_a_retrained_qat_graph_of_the_same_float_student(tmp_path):
    """Build ships distill's QAT graph as the INT8 engine: one trained again (distill.epochs 0:
    the float student, so export's outputs, unchanged) is not the graph the engine was built
    from. Without QAT, build reads export's outputs alone, as runs recorded before."""
    run = RunDir(tmp_path)
    assert _build_upstream(run, "qat graph") != _build_upstream(run, "another qat graph")
    assert _build_upstream(run, None) == run.output_hash("export")


def _split_hashes(seed: int, split_seed: int | None = None) -> dict[str, str]:
    """Each stage's input hash for a run of `seed` whose eval split `split_seed` draws."""
    from kdc.pipeline import _stages, stage_hash
    from kdc.profiles import load_profile

    data = {"source": "sklearn:digits", "split_seed": split_seed}
    cfg = parse_config(
        {"name": "t", "task": "image-classification", "seed": seed, "teacher": {"name": "x"}}
        | {"data": data}
    )
    return {s.name: stage_hash(s, cfg, load_profile("host"), "", "") for s in _stages()}


def test_the_stages_reading_the_split_follow_the_seed_that_draws_it():
    """Without data.split_seed the run's seed draws the eval split (and the training rows): export
    checks parity, build calibrates and verify evaluates on rows another seed does not draw, even
    where distillation made the same student (distill.epochs 0). With it, the seed is not read."""
    split = {"export", "build", "verify"}
    for a, b in ((0, 1), (1, 2)):
        first, second = _split_hashes(a), _split_hashes(b)
        assert split <= {s for s in first if first[s] != second[s]}
    first, second = _split_hashes(0, split_seed=3), _split_hashes(1, split_seed=3)
    assert not split & {s for s in first if first[s] != second[s]}


def _stage_hash(stage: str, target: str, engines: list[str] | None, **quantize: object) -> str:
    from kdc.pipeline import _stages, stage_hash
    from kdc.profiles import load_profile

    cfg = parse_config(
        {
            "name": "t",
            "task": "image-classification",
            "teacher": {"name": "resnet18"},
            "data": {"source": "sklearn:digits"},
            "quantize": {"precision": "int8", **quantize},
            "build": {"engines": engines},
        }
    )
    step = next(s for s in _stages() if s.name == stage)
    return stage_hash(step, cfg, load_profile(target), "", "")


@pytest.mark.parametrize(
    ("target", "engines", "symmetric", "changed"),
    [
        ("host", None, None, False),
        ("host", None, False, False),
        ("host", None, True, True),
        ("jetson", None, None, False),
        ("jetson", None, True, False),
        ("jetson", None, False, True),
        ("jetson", ["onnxruntime", "tensorrt"], None, False),
        ("jetson", ["onnxruntime"], None, True),
        ("jetson", ["onnxruntime"], False, True),
    ],
)
@pytest.mark.parametrize(("method", "stage"), [("ptq", "build"), ("qat", "distill")])
def test_an_int8_graph_quantized_for_another_engine_than_before_quantizes_again(
    monkeypatch, target, engines, symmetric, changed, method, stage
):
    """A TensorRT target's run whose build.engines leaves TensorRT out made TensorRT's graph;
    symmetric activations on a CPU target, or asymmetric on a TensorRT one, a graph finished for
    the other engine (signed Q/DQ for symmetric ones, `qdq.finish_qdq`): those runs build (or
    train, QAT) again; a run quantized for the same engine as before hashes as before."""
    from kdc import stage_reads

    asked = {"symmetric_activations": symmetric, "method": method}
    now = _stage_hash(stage, target, engines, **asked)
    monkeypatch.setattr(stage_reads, "int8_engine_facets", lambda cfg, profile: {})
    before = _stage_hash(stage, target, engines, **asked)
    assert (now != before) == changed
