"""`distill.precision: bf16`: training's forward passes (student, teacher) under bfloat16
autocast, losses and the teacher cache in fp32, evaluation and QAT in fp32; hashed only where
set; warned on a CPU without native bfloat16."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import config_of, sentences, tiny_bert, write_yaml
from typer.testing import CliRunner

from kdc import api
from kdc.cli import app
from kdc.compress.distill import DistillData, _Trainer, distill
from kdc.config import DistillConfig, load_config
from kdc.models.hf import HFTextAdapter

TRAINING_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)


def _spy(module: torch.nn.Module) -> tuple[set[torch.dtype], list]:
    """The dtypes of the Linear and Conv2d outputs of `module` while it trains, and the hooks."""
    seen: set[torch.dtype] = set()

    def hook(m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        if m.training:
            seen.add(out.dtype)

    mods = [m for m in module.modules() if isinstance(m, TRAINING_LAYERS)]
    return seen, [m.register_forward_hook(hook) for m in mods]


def _text(teacher: HFTextAdapter) -> DistillData:
    rows = sentences(240, 0)
    x = teacher.encode([r[0] for r in rows])
    y = np.array([1 if r[1] == "positive" else 0 for r in rows])
    train = {k: v[:200] for k, v in x.items()}
    return DistillData(
        train, y[:200], {k: v[200:] for k, v in x.items()}, y[200:], teacher.forward_numpy(train)
    )


def _trained_teacher(bert_project) -> HFTextAdapter:
    from transformers import BertForSequenceClassification, BertTokenizerFast

    path = bert_project.parent / "teacher"
    model = BertForSequenceClassification.from_pretrained(str(path)).eval()
    return HFTextAdapter(model, BertTokenizerFast.from_pretrained(str(path)), 16)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_forwards_autocast_and_the_teacher_cache_holds_fp32(tmp_path, precision):
    bert, tok = tiny_bert(tmp_path, layers=2)
    teacher = HFTextAdapter(bert.eval(), tok, 16)
    student = HFTextAdapter(tiny_bert(tmp_path, layers=1)[0], tok, 16)
    data = _text(teacher)
    cfg = DistillConfig(
        epochs=1, batch_size=32, max_steps=3, precision=precision, losses=["logits", "attention"]
    )
    seen, hooks = _spy(student.module)
    tr = _Trainer(student, data, cfg, 0, teacher, None)
    with tr.s_taps, tr.t_taps:
        batch, t_logits, labels, feats = tr.targets(np.arange(8), 0, 0)
    assert t_logits.dtype == torch.float32  # the teacher ran under autocast, its outputs cast
    assert {v.dtype for v in feats.values()} == {torch.float32}
    kept = list(tr.cache.kept.values())
    assert kept and {v.dtype for _, f in kept for v in (_, *f.values())} == {torch.float32}
    distill(student, data, cfg, 0, teacher=teacher)
    for h in hooks:
        h.remove()
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen == {want}
    assert all(p.dtype == torch.float32 for p in student.module.parameters())  # master weights


def test_bf16_text_distillation_learns(tmp_path, bert_project):
    teacher = _trained_teacher(bert_project)
    student = HFTextAdapter(tiny_bert(tmp_path, layers=1)[0], teacher.tokenizer, 16)
    data = _text(teacher)
    cfg = DistillConfig(epochs=4, batch_size=16, lr=2e-3, precision="bf16")
    res = distill(student, data, cfg, 0, teacher=teacher)
    assert np.isfinite(res.history[-1]["loss"])
    assert res.kept_metric >= 0.8, res.history


def test_qat_epochs_train_in_fp32_when_distill_is_bf16(cnn_project, tmp_path, monkeypatch):
    """The stage's float epochs autocast, its QAT epochs (fake quantization) do not; the manifest
    records the training precision."""
    import kdc.stages.distill as stage

    calls: list[tuple[str, set[torch.dtype]]] = []

    def spied(student, data, cfg, *args, **kw):
        seen, hooks = _spy(student.module)
        try:
            return distill(student, data, cfg, *args, **kw)
        finally:
            for h in hooks:
                h.remove()
            calls.append((cfg.precision, seen))

    monkeypatch.setattr(stage, "distill", spied)
    cfg = config_of(cnn_project)
    cfg["distill"].update(epochs=1, precision="bf16")
    cfg["quantize"].update(method="qat", qat_epochs=1)
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    api.search(path, "host", run, quiet=True)
    api.distill(path, "host", run, quiet=True)
    assert calls == [("bf16", {torch.bfloat16}), ("fp32", {torch.float32})]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["distill"]["metrics"]["train_precision"] == "bf16"


def test_distill_hash_unchanged_at_the_default_precision(cnn_project):
    from kdc.pipeline import _stages, stage_hash
    from kdc.profiles import load_profile
    from kdc.stage_reads import config_reads, distill_idle, distill_reads

    cfg, profile = load_config(cnn_project), load_profile("host")
    reads = config_reads(cfg, distill_reads(cfg), distill_idle(cfg))["distill"]
    # as before distill.precision existed: the section's hashed fields, precision absent
    hashed = cfg.distill.model_dump(mode="json", exclude={"precision", "teacher_cache_mb"})
    assert reads == hashed
    bf16 = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"precision": "bf16"})})
    assert config_reads(bf16, distill_reads(bf16), distill_idle(bf16))["distill"] == {
        **reads,
        "precision": "bf16",
    }
    changed = {
        s.name
        for s in _stages()
        if stage_hash(s, cfg, profile, "", "") != stage_hash(s, bf16, profile, "", "")
    }
    assert changed == {"distill", "report"}


def _assert_validate_warns(project, tmp_path, precision: str, why: str | None) -> None:
    """`kdc validate` of `project` at distill.precision `precision` warns `why` of bf16 training
    once (None: says nothing of distill.precision)."""
    cfg = config_of(project)
    cfg["distill"]["precision"] = precision
    path = write_yaml(tmp_path / "model.yaml", cfg)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    if why is None:
        assert "distill.precision" not in out, out
        return
    note = f"warning: {path}: distill.precision bf16: {why} (fix: set distill.precision: fp32)"
    assert out.count(note) == 1, out


@pytest.mark.parametrize(
    ("precision", "flags", "warned"),
    [
        ("bf16", {"avx2", "avx512f"}, True),
        ("bf16", {"avx512f", "avx512_bf16"}, False),
        ("bf16", {"amx_bf16"}, False),
        ("fp32", {"avx2"}, False),
    ],
)
def test_bf16_on_a_cpu_without_native_bf16_is_warned_once(
    cnn_project, tmp_path, monkeypatch, precision, flags, warned
):
    import kdc.profiles

    monkeypatch.setattr(kdc.profiles, "cpu_info", lambda: ("Old CPU", flags))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    why = (
        "this CPU (Old CPU) has no native bfloat16 instructions (avx512_bf16 or amx_bf16), so "
        "autocast emulates them and training runs slower than in fp32"
    )
    _assert_validate_warns(cnn_project, tmp_path, precision, why if warned else None)


def test_accelerate_mixed_precision_setting_is_not_applied(monkeypatch):
    """`accelerate launch --mixed_precision` (or its config file) sets ACCELERATE_MIXED_PRECISION,
    which Accelerate would apply to the whole objective, losses too, behind distill.precision's
    back (and the manifest's train_precision): kdc's accelerator never autocasts itself."""
    from accelerate.state import AcceleratorState

    from kdc.compress.distill import make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(True)  # the first accelerator of a process reads the variable
    try:
        assert make_accelerator().mixed_precision == "no"
    finally:
        AcceleratorState._reset_state(True)


@pytest.mark.parametrize(("capability", "warned"), [((7, 5), True), ((8, 0), False)])
def test_bf16_on_a_gpu_without_native_bf16_is_warned(
    cnn_project, tmp_path, monkeypatch, capability, warned
):
    """Distillation trains on the GPU where PyTorch sees one: a GPU before compute capability 8.0
    (Ampere) has no bfloat16 tensor cores, and PyTorch emulates it there. No GPU here: torch.cuda
    is faked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    why = (
        f"this GPU (Tesla T4, compute capability {capability[0]}.{capability[1]}) has no native "
        "bfloat16 (compute capability 8.0 or later), so autocast emulates it"
    )
    _assert_validate_warns(cnn_project, tmp_path, "bf16", why if warned else None)
