"""Distillation training: feature taps, projections trained and not exported, checkpoint resume,
early stopping, two-process DDP agreement, and the stage on the tiny projects."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import config_of, tiny_bert, write_yaml

from kdc.compress.distill import (
    Checkpoint,
    DistillData,
    Objective,
    _Trainer,
    distill,
    resolve_losses,
    teacher_runs_each_step,
)
from kdc.compress.hooks import FeatureTaps, find_taps
from kdc.config import DistillConfig, LossConfig
from kdc.data.batching import trim_padding
from kdc.models.cnn import small_cnn
from kdc.models.hf import HFTextAdapter
from kdc.models.vision import VisionAdapter

FEATURE_LOSSES = [
    {"name": "logits"},
    {"name": "hidden"},
    {"name": "attention"},
    {"name": "relation"},
]


def cnn(channels: tuple[int, ...], seed: int) -> VisionAdapter:
    torch.manual_seed(seed)
    source = {
        "kind": "entrypoint",
        "entrypoint": "kdc.models.cnn:small_cnn",
        "kwargs": {"num_classes": 4, "channels": list(channels)},
    }
    return VisionAdapter(small_cnn(num_classes=4, channels=channels).eval(), source)


def toy_data(teacher: VisionAdapter, n: int = 96, seed: int = 0) -> DistillData:
    """Four learnable classes: the quadrant of a bright blob on 8×8 images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        r, s = divmod(int(c), 2)
        x[i, 0, r * 4 : r * 4 + 4, s * 4 : s * 4 + 4] += 2.0
    split = int(n * 0.75)
    logits = teacher.forward_numpy({"pixel_values": x[:split]})
    return DistillData(
        {"pixel_values": x[:split]}, y[:split], {"pixel_values": x[split:]}, y[split:], logits
    )


def _cfg(**kw) -> DistillConfig:
    base = {"epochs": 3, "batch_size": 16, "lr": 0.01, "losses": FEATURE_LOSSES}
    return DistillConfig(**{**base, **kw})


def test_taps_capture_named_outputs_of_bert_and_cnn(tmp_path):
    model, tok = tiny_bert(tmp_path, layers=2)
    bert = HFTextAdapter(model.eval(), tok, 16)
    ex = bert.encode(["good movie", "bad plot and actor"])
    with FeatureTaps(
        find_taps(bert, ex, ("embeddings", "hidden", "query", "value", "pooled"))
    ) as taps:
        bert.forward_numpy(ex)
        f = taps.take()
    assert set(f) == {
        "embeddings",
        "hidden0",
        "hidden1",
        "query0",
        "query1",
        "value0",
        "value1",
        "pooled",
    }
    # forward_numpy trims padding: [CLS] bad plot and actor [SEP] is 6 tokens
    assert f["hidden1"].shape == (2, 6, 32) and f["query0"].shape == (2, 2, 6, 16)
    assert f["pooled"].shape == (2, 32)
    net = cnn((4, 8), 0)
    ex = {"pixel_values": np.zeros((3, 1, 8, 8), np.float32)}
    with FeatureTaps(find_taps(net, ex, ("hidden", "pooled"))) as taps:
        net.forward_numpy(ex)
        f = taps.take()
    assert f["hidden0"].shape == (3, 4, 8, 8) and f["hidden1"].shape == (3, 8, 4, 4)
    assert f["pooled"].shape == (3, 8)
    assert not taps._handles  # detached on exit


def test_projections_train_with_the_student_and_are_not_exported():
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    data = toy_data(teacher)
    tr = _Trainer(student, data, _cfg(), 0, teacher, None)
    with tr.s_taps, tr.t_taps:
        _, opt = tr.prepare()
    proj = list(tr.objective.projections.parameters())
    assert proj  # 4 → 8 and 8 → 16 channel maps for the hidden loss
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in proj)
    assert not any("projections" in k for k in student.module.state_dict())


def test_distill_improves_the_student_and_records_losses():
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    _train_teacher(teacher)
    data = toy_data(teacher)
    before = float((student.forward_numpy(data.val).argmax(-1) == data.val_labels).mean())
    res = distill(student, data, _cfg(epochs=6, lr=0.02), 0, teacher=teacher)
    assert res.kept_metric > max(before, 0.5)
    assert set(res.history[-1]["losses"]) == {"logits", "hidden", "attention", "relation"}
    assert [s["name"] for s in res.losses] == ["logits", "hidden", "attention", "relation"]


def test_teacher_logits_cached_or_from_its_run_per_batch_train_alike():
    """Precomputed logits spare the teacher's runs; without them the teacher labels each batch
    (as it does anyway where a loss taps its features) and training ends with the same weights."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    logits_only = [{"name": "logits"}]
    calls = []
    hook = teacher.module.register_forward_hook(lambda *_: calls.append(1))
    weights, runs = [], []
    for logits in (data.teacher_logits, None):
        student = cnn((4, 8), 1)
        d = dataclasses.replace(data, teacher_logits=logits)
        distill(student, d, _cfg(losses=logits_only), 0, teacher=teacher)
        weights.append(student.module.state_dict())
        runs.append(len(calls))
    hook.remove()
    assert runs[0] == 0 and runs[1] > 0
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value)
    assert teacher_runs_each_step(_cfg(), "cnn", None, data.train)
    assert not teacher_runs_each_step(_cfg(losses=logits_only), "cnn", None, data.train)
    shifted = _cfg(losses=logits_only, augment="auto")
    assert teacher_runs_each_step(shifted, "cnn", None, data.train)
    with pytest.raises(ValueError, match="teacher's logits or the teacher"):
        distill(
            cnn((4, 8), 1),
            dataclasses.replace(data, teacher_logits=None),
            _cfg(losses=logits_only),
            0,
        )


def _train_teacher(teacher: VisionAdapter) -> None:
    data = toy_data(teacher, n=256, seed=1)
    opt = torch.optim.Adam(teacher.module.parameters(), lr=0.02)
    x, y = torch.from_numpy(data.train["pixel_values"]), torch.from_numpy(data.train_labels)
    teacher.module.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(teacher.module(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.module.eval()


class Crash(Exception):
    pass


def _student(dropout: bool) -> VisionAdapter:
    """The (4, 8) CNN student, with dropout before its classifier if asked (training then draws
    from the global RNG, which a resumed run must continue as the uninterrupted one did)."""
    student = cnn((4, 8), 1)
    if dropout:
        student.module.pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Dropout())
    return student


@pytest.mark.parametrize("dropout", [False, True])
def test_checkpoint_resume_continues_from_the_saved_epoch(tmp_path, dropout):
    """A resumed run ends with the uninterrupted run's weights, also where training draws random
    numbers (dropout) and the loss projections, made anew on resume, draw their initial ones."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    straight = _student(dropout)
    distill(straight, data, _cfg(), 0, teacher=teacher)

    def crash_after_second(epoch, total, rec):
        if epoch == 2:
            raise Crash

    ckpt = Checkpoint(tmp_path / "ckpt", "inputs-1")
    resumed = _student(dropout)
    with pytest.raises(Crash):
        distill(
            resumed, data, _cfg(), 0, teacher=teacher, checkpoint=ckpt, progress=crash_after_second
        )
    saved = torch.load(ckpt.path, weights_only=True)
    assert saved["epoch"] == 1 and saved["elapsed_s"] > 0
    restarted = _student(dropout)
    res = distill(restarted, data, _cfg(), 0, teacher=teacher, checkpoint=ckpt)
    assert res.resumed_from_epoch == 1 and [h["epoch"] for h in res.history] == [0, 1, 2]
    assert res.earlier_s == saved["elapsed_s"]  # the stage's wall time counts the first run's
    for k, v in straight.module.state_dict().items():  # same result as without the crash
        torch.testing.assert_close(restarted.module.state_dict()[k], v)
    other = distill(
        cnn((4, 8), 1),
        data,
        _cfg(),
        0,
        teacher=teacher,
        checkpoint=Checkpoint(tmp_path / "ckpt", "inputs-2"),
    )
    assert other.resumed_from_epoch is None and other.earlier_s == 0  # another run's is ignored


class CrashAfterSave(Checkpoint):
    def save(self, state: dict) -> None:
        super().save(state)
        raise Crash


def test_a_run_stopped_early_stays_stopped_when_resumed(tmp_path):
    """A run killed after checkpointing the epoch that stopped it early trains no further epoch
    when resumed: it ends as the uninterrupted run did."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    cfg = _cfg(lr=1e-12, epochs=5, early_stopping_patience=1)
    with pytest.raises(Crash):
        distill(
            cnn((4, 8), 1), data, cfg, 0, teacher=teacher, checkpoint=CrashAfterSave(tmp_path, "k")
        )
    res = distill(
        cnn((4, 8), 1), data, cfg, 0, teacher=teacher, checkpoint=Checkpoint(tmp_path, "k")
    )
    assert res.resumed_from_epoch == 1 and len(res.history) == 1


def test_training_ends_at_max_steps():
    """Epochs after `max_steps` would train nothing: none is run, evaluated or recorded."""
    teacher = cnn((8, 16), 0)
    res = distill(
        cnn((4, 8), 1), toy_data(teacher), _cfg(epochs=4, max_steps=2), 0, teacher=teacher
    )
    assert [h["steps"] for h in res.history] == [2] and res.kept_epoch == 0


def test_early_stopping_and_unknown_loss():
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    res = distill(
        cnn((4, 8), 1),
        data,
        _cfg(lr=1e-12, epochs=5, early_stopping_patience=1),
        0,
        teacher=teacher,
    )
    assert len(res.history) == 1
    from kdc.errors import UserError

    with pytest.raises(UserError, match="unknown loss"):
        resolve_losses(_cfg(losses=[LossConfig(name="nope")]), "cnn")
    assert [s.name for s in resolve_losses(DistillConfig(), "transformer")][0] == "logits"
    # an embedding model's configured embedding loss targets its output unless told otherwise
    mine = _cfg(losses=[LossConfig(name="embedding", params={"mse": 0.0})])
    (spec,) = resolve_losses(mine, "transformer", "sentence-embedding")
    assert spec.params == {"on": "output", "mse": 0.0}
    (spec,) = resolve_losses(mine, "transformer", "text-classification")
    assert spec.params == {"mse": 0.0}
    assert isinstance(Objective(torch.nn.Linear(2, 2), [], DistillConfig(), None), torch.nn.Module)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    _train_teacher(teacher)  # deterministic: the same teacher on both ranks
    res = distill(student, toy_data(teacher), _cfg(epochs=10, lr=0.02), 0, teacher=teacher)
    torch.save(
        {"params": {k: v for k, v in student.module.named_parameters()}, "history": res.history},
        f"{out}/rank{rank}.pt",
    )


@pytest.mark.slow  # two fresh interpreters: ~30-45 s
def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))  # the spawned workers import this module
    torch.multiprocessing.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["history"][-1]["steps"] == b["history"][-1]["steps"] == 30  # 10 · ⌈72 / 2 / 16⌉
    for k, v in a["params"].items():
        torch.testing.assert_close(b["params"][k], v, rtol=0, atol=0)
    start = cnn((4, 8), 1).module.state_dict()  # trained, not the initial weights restored
    assert any(not torch.equal(start[k], v) for k, v in a["params"].items())


def test_stage_prunes_and_saves_a_reloadable_student(cnn_project, tmp_path, capsys):
    from kdc import api
    from kdc.models import load_student

    cfg = config_of(cnn_project)
    cfg["distill"].update(epochs=2, losses=[{"name": "logits"}, {"name": "relation"}])
    cfg["prune"] = {"enabled": True, "ratio": 0.5, "steps": 2, "epochs": 1}
    path = write_yaml(tmp_path / "model.yaml", cfg)
    api.search(path, "host", tmp_path / "run", quiet=True)
    api.distill(path, "host", tmp_path / "run")
    said = capsys.readouterr().out
    assert "kept the last epoch (2 of 2)" in said  # one-based for people
    held = re.search(r"\((\d+) of (\d+) training rows held out for it\)", said)
    assert held and 0 < int(held[1]) <= int(held[2]) // 2  # the validation carve-out, said
    assert "pruned " in said and "parameters (" in said and "% removed)" in said
    run = tmp_path / "run"
    spec = json.loads((run / "distill" / "student.json").read_text())
    assert [s["name"] for s in spec["losses"]] == ["logits", "relation"]
    pruning = spec["pruning"]
    assert pruning["ratio"] == 0.5 and pruning["params_after"] < 0.6 * pruning["params_before"]
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["distill"]["metrics"]
    # learned, far above chance (0.1): 2 pruned epochs give 0.50-0.62 by seed and CPU kernels
    assert metrics["val_accuracy"] > 0.3 and metrics["resumed_from_epoch"] is None
    assert metrics["val_engine"] == "pytorch-cpu-fp32"  # REPORT.md: an accuracy names its engine
    assert not (run / "distill" / "checkpoint" / "last.pt").exists()
    student = load_student(run / "distill" / "student")
    assert student.params() == pruning["params_after"]
    assert pruning["params_removed"] == round(
        1 - pruning["params_after"] / pruning["params_before"], 4
    )


def test_pruning_that_rounding_took_far_beyond_its_ratio_is_warned_of():
    """ratio 0.3 on 16-channel layers rounded to multiples of 8 kept 8: 69 % of the weights
    went, where 0.3 of channels in and out removes about 51 %."""
    from types import SimpleNamespace

    from kdc.stages.distill import _pruned

    said: list[str] = []
    ctx = SimpleNamespace(log=said.append, warn=lambda m: said.append("warning: " + m))
    info = {"params_before": 24058, "ratio": 0.3, "round_to": 8}
    _pruned(ctx, info, 7522)
    assert info["params_removed"] == 0.6873 and any("multiples of 8" in s for s in said)
    said.clear()
    _pruned(ctx, {"params_before": 24058, "ratio": 0.3, "round_to": 8}, 12000)
    assert not any(s.startswith("warning") for s in said)


def test_trimmed_padding_gives_the_padded_outputs(tmp_path):
    """Batches are cut to their longest row (training and forward_numpy): same logits as the
    batch padded to max_length, and rows shorter than the batch keep their padding."""
    model, tok = tiny_bert(tmp_path)
    adapter = HFTextAdapter(model.eval(), tok, max_length=32)
    inputs = adapter.encode(["good great fine", "bad", "good bad awful terrible poor fine"])
    trimmed = trim_padding({k: torch.from_numpy(v) for k, v in inputs.items()})
    assert trimmed["input_ids"].shape == (3, 8)  # [CLS] + 6 words + [SEP]
    with torch.inference_mode():
        padded = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    np.testing.assert_allclose(adapter.forward_numpy(inputs), padded, atol=1e-5)


def test_group_by_length_batches_similar_lengths_and_keeps_every_row(tmp_path):
    """Text batches come from length-sorted windows (less padding), each row once per epoch, the
    order still changing with the epoch; `group_by_length: false` keeps the plain permutation."""
    model, tok = tiny_bert(tmp_path)
    adapter = HFTextAdapter(model.eval(), tok, max_length=32)
    rng = np.random.default_rng(0)
    words = ["good", "bad", "fine", "poor"]
    texts = [" ".join(rng.choice(words, int(rng.integers(1, 25)))) for _ in range(128)]
    x = adapter.encode(texts)
    data = DistillData(x, np.zeros(128, dtype=np.int64), x, np.zeros(128, dtype=np.int64), None)
    data.teacher_logits = np.zeros((128, 2), dtype=np.float32)
    lengths = x["attention_mask"].sum(1)

    def padded_tokens(tr: _Trainer, epoch: int) -> int:
        order = tr.shard(epoch)
        assert sorted(order) == list(range(128))
        return sum(lengths[order[i : i + 8]].max() * 8 for i in range(0, 128, 8))

    grouped = _Trainer(adapter, data, _cfg(batch_size=8, losses=[{"name": "ce"}]), 0, None, None)
    plain = _Trainer(
        adapter,
        data,
        _cfg(batch_size=8, losses=[{"name": "ce"}], group_by_length=False),
        0,
        None,
        None,
    )
    assert padded_tokens(grouped, 0) < 0.8 * padded_tokens(plain, 0)
    assert list(grouped.shard(0)) != list(grouped.shard(1))
    assert list(plain.shard(0)) == list(np.random.default_rng([0, 0]).permutation(128))


@pytest.mark.parametrize("select", ["last", "best"])
def test_select_ships_the_last_or_the_best_validation_epoch(select):
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    _train_teacher(teacher)
    data = toy_data(teacher)
    res = distill(student, data, _cfg(epochs=4, lr=0.05, select=select), 0, teacher=teacher)
    scores = [h["val_accuracy"] for h in res.history]
    best = len(scores) - 1 - int(np.argmax(scores[::-1]))  # a tie goes to the later epoch
    kept = len(scores) - 1 if select == "last" else best
    assert res.kept_epoch == kept and res.kept_metric == scores[kept]
    shipped = float((student.forward_numpy(data.val).argmax(-1) == data.val_labels).mean())
    assert shipped == pytest.approx(scores[kept])


def test_select_best_keeps_a_trained_epoch_that_ties_the_untrained_student(monkeypatch):
    """Every epoch at the untrained student's validation score (an easy task, 1.0 throughout):
    `select: best` kept the untrained student and threw the distillation away."""
    from kdc.compress import distill as distill_mod

    monkeypatch.setattr(distill_mod, "evaluate", lambda adapter, data: 1.0)
    teacher, student = cnn((8, 16), 0), cnn((4, 8), 1)
    res = distill(student, toy_data(teacher), _cfg(epochs=3, select="best"), 0, teacher=teacher)
    assert res.kept_epoch == 2 and res.kept_metric == 1.0


def test_no_epochs_keeps_the_untrained_student_and_says_so(cnn_project, tmp_path, capsys):
    """distill.epochs 0 ships the sliced student untrained (a baseline); the log said 'kept the
    last epoch (-1)'."""
    from kdc import api

    cfg = config_of(cnn_project)
    cfg["distill"]["epochs"] = 0
    path = write_yaml(tmp_path / "model.yaml", cfg)
    api.search(path, "host", tmp_path / "run", quiet=True)
    api.distill(path, "host", tmp_path / "run")
    assert "kept the untrained student (distill.epochs is 0)" in capsys.readouterr().out
