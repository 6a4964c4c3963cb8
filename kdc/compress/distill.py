"""Train a student from a teacher with the configured losses, under Hugging Face Accelerate
(`accelerate launch` gives DDP, one CPU process otherwise). Each epoch is checkpointed and a
restarted run continues from it; the last epoch is kept, or (`select: best`) the best on a
validation split carved from train (never the eval split), which also drives early stopping;
structured pruning runs gradually during the first epochs when asked. A CNN student's BatchNorm
statistics are re-estimated after each epoch, before it is evaluated (`precise_bn`).

Training runs on the accelerator's device (the first CUDA GPU where PyTorch sees one): the student
and the frozen teacher are moved there for the run and handed back on the devices they came on
(the CPU), and each batch, its labels and the teacher's targets are moved there in one place
(`_Trainer.placed`)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kdc.compress.augment import augment_name, resolve_augment
from kdc.compress.checkpoint import Checkpoint
from kdc.compress.evaluate import evaluate
from kdc.compress.hooks import FeatureTaps, find_taps
from kdc.compress.losses import (
    DEFAULT_LOSSES,
    LOSS_TAPS,
    LOSSES,
    TASK_LOSS_DEFAULTS,
    TASK_LOSSES,
    LossInputs,
    Projections,
)
from kdc.compress.precise_bn import precise_bn
from kdc.compress.prune import GradualPruning, sync_after_pruning
from kdc.compress.teacher_cache import MB, TeacherCache
from kdc.config import DistillConfig, LossConfig
from kdc.data.batching import trim_padding
from kdc.errors import UserError
from kdc.models.base import ModelAdapter
from kdc.models.device import module_device, on_device
from kdc.models.shapes import apply_shapes

Progress = Callable[[int, int, dict], None]  # (epochs done, epochs, the epoch's record)
Steps = Callable[[int, int], None]  # (training steps done, steps in all)
# Batches per length-sorted window when `distill.group_by_length` (Hugging Face Trainer uses 50;
# 8 keeps batches random enough on a few hundred rows and cuts padding on drugsCom from 1.77× the
# real tokens to 1.15×).
GROUP_WINDOW = 8


@dataclass
class DistillData:
    """Training rows with the teacher's logits on them (None where training runs the teacher on
    every batch, see `teacher_runs_each_step`; not read where a loss taps its features), and the
    validation rows. Labels are empty for sentence-embedding (`task`), whose validation score is
    the mean cosine to the teacher's embeddings `val_teacher_logits`."""

    train: dict[str, np.ndarray]
    train_labels: np.ndarray
    val: dict[str, np.ndarray]
    val_labels: np.ndarray
    teacher_logits: np.ndarray | None
    val_teacher_logits: np.ndarray | None = None
    task: str | None = None

    def __len__(self) -> int:
        return len(next(iter(self.train.values())))

    def rows(self, sel: np.ndarray) -> dict[str, torch.Tensor]:
        return trim_padding({k: torch.from_numpy(v[sel]) for k, v in self.train.items()})


@dataclass
class DistillResult:
    history: list[dict]
    kept_epoch: int
    kept_metric: float
    losses: list[dict] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    teacher_rows: dict | None = None  # TeacherCache.stats() where the teacher ran in training
    earlier_s: float = 0.0  # training time of the checkpointed epochs an earlier run did
    precise_bn: dict | None = None  # the kept model's BatchNorm re-estimation (`precise_bn`)


def resolve_losses(cfg: DistillConfig, family: str, task: str | None = None) -> list[LossConfig]:
    """The configured losses (with the task's parameter defaults), or the task's (else the
    family's) default recipe; unknown names are user errors."""
    recipe = TASK_LOSSES.get(task or "") or DEFAULT_LOSSES.get(family, [{"name": "logits"}])
    specs = cfg.losses if cfg.losses is not None else [LossConfig(**d) for d in recipe]
    defaults = TASK_LOSS_DEFAULTS.get(task or "", {})
    specs = [
        s.model_copy(update={"params": {**defaults.get(s.name, {}), **s.params}}) for s in specs
    ]
    for loss in specs:
        if loss.name not in LOSSES:
            raise UserError(
                f"unknown loss '{loss.name}'",
                field="distill.losses",
                fix=f"use one of {', '.join(sorted(LOSSES))}",
            )
    return specs


def wanted_taps(specs: list[LossConfig]) -> set[str]:
    """Prefixes of the feature taps the losses `specs` read (none for losses on outputs)."""
    return {p for s in specs if s.params.get("on") != "output" for p in LOSS_TAPS[s.name]}


def teacher_runs_each_step(
    cfg: DistillConfig, family: str, task: str | None, train: dict[str, np.ndarray]
) -> bool:
    """Whether training runs the teacher on every batch (to label augmented rows, or for the
    features a loss reads); its logits then come with each batch and need no precomputing."""
    specs = resolve_losses(cfg, family, task)
    return augment_name(cfg.augment, train) is not None or bool(wanted_taps(specs))


def resolved_loss_params(spec: LossConfig, cfg: DistillConfig) -> dict:
    """Loss parameters: the loss's own, with the section-wide T and α as defaults for `logits`."""
    base = {"temperature": cfg.temperature, "alpha": cfg.alpha} if spec.name == "logits" else {}
    return {**base, **spec.params}


# the dtype training's forward passes autocast to, by `distill.precision` (None: none)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def train_autocast(cfg: DistillConfig, device: str) -> contextlib.AbstractContextManager[object]:
    """The context training's forward passes (student and teacher) run in on `device` ("cpu",
    "cuda"): autocast to `distill.precision`'s dtype, none for fp32. Weights, optimizer, losses,
    evaluation and QAT stay fp32."""
    dtype = AUTOCAST_DTYPES[cfg.precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


class Objective(nn.Module):
    """The student and the learned projections (trained with it, never exported); `forward`
    returns the weighted sum of the losses on one batch, the student run under
    `train_autocast` on `device` and the losses computed in fp32."""

    def __init__(
        self,
        student: nn.Module,
        specs: list[LossConfig],
        cfg: DistillConfig,
        taps: FeatureTaps | None,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        self.student = student
        self.projections = Projections()
        self.specs = [(s.name, s.weight, resolved_loss_params(s, cfg)) for s in specs]
        self.taps = taps
        self.parts: dict[str, float] = {}
        self.autocast = lambda: train_autocast(cfg, device)

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        t_logits: torch.Tensor,
        labels: torch.Tensor | None,
        t_feats: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        with self.autocast():
            logits = self.student(**batch).float()
        x = LossInputs(
            logits,
            t_logits,
            labels,
            self.taps.take() if self.taps else {},
            t_feats,
            batch.get("attention_mask"),
            self.projections,
        )
        total = logits.new_zeros(())
        for name, weight, params in self.specs:
            value = LOSSES[name](x, **params)
            self.parts[name] = float(value.detach())
            total = total + weight * value
        return total


def make_accelerator() -> Any:
    """Accelerate's handle: DDP under `accelerate launch`/torchrun, CPU when there is no GPU.
    Never its own mixed precision (`accelerate launch --mixed_precision`, its config file): that
    would autocast the losses too; `distill.precision` (`train_autocast`) is the one setting."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 10 % of steps, then linear decay to zero."""
    return min(1.0, (step + 1) / max(1, total // 10)) * max(0.0, 1 - step / total)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The random generators a checkpoint keeps (dropout draws from them): the CPU's, and the
    training GPU's where training runs on CUDA, so a resumed run draws as an uninterrupted one
    would (only that GPU's: a resume may see fewer GPUs)."""
    cuda = {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
    return {"torch_rng": torch.get_rng_state(), **cuda}


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Set the generators `rng_state` kept, the GPU's on training `device` (a checkpoint of a CPU
    run has none; one of a GPU run resumed on the CPU leaves it)."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _tensor_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _Trainer:
    """One distillation run: data sharding per process, optimizer (re)building, epochs."""

    def __init__(
        self,
        student: ModelAdapter,
        data: DistillData,
        cfg: DistillConfig,
        seed: int,
        teacher: ModelAdapter | None,
        pruning: GradualPruning | None,
    ) -> None:
        self.student, self.data, self.cfg, self.seed = student, data, cfg, seed
        self.pruning = pruning
        self.acc = make_accelerator()
        specs = resolve_losses(cfg, student.family, data.task)
        wanted = wanted_taps(specs)
        example = {k: v[:2] for k, v in data.train.items()}
        if wanted and teacher is None:
            raise ValueError(f"losses {[s.name for s in specs]} need the teacher model")
        self.s_taps = FeatureTaps(find_taps(student, example, wanted)) if wanted else None
        self.t_taps = FeatureTaps(find_taps(teacher, example, wanted)) if wanted else None
        self.teacher = teacher
        if teacher is not None:
            teacher.module.eval()  # frozen: its outputs on a row are the same every epoch
        taps = self.t_taps.taps if self.t_taps else {}
        axes = {n: t.seq_axis for n, t in taps.items() if t.seq_axis is not None}
        self.cache = TeacherCache(axes, cfg.teacher_cache_mb * MB)
        if augment_name(cfg.augment, data.train) is not None and teacher is None:
            raise ValueError("distill.augment needs the teacher model to label augmented rows")
        self.augment = resolve_augment(cfg.augment, data.train, teacher)  # runs on the host
        self.device = self.acc.device
        self.objective = Objective(student.module, specs, cfg, self.s_taps, self.device.type)
        n = self.n = len(data)
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.per_rank = n // self.world
        self.steps_per_epoch = math.ceil(self.per_rank / cfg.batch_size)
        self.total = max(1, min(cfg.epochs * self.steps_per_epoch, cfg.max_steps or 1 << 30))
        if data.teacher_logits is None and teacher is None:
            raise ValueError("distillation needs the teacher's logits or the teacher model")
        logits = data.teacher_logits
        self.t_logits = None if logits is None else torch.from_numpy(logits.astype(np.float32))
        self.labels = torch.from_numpy(data.train_labels) if len(data.train_labels) else None
        mask = data.train.get("attention_mask")
        group = cfg.group_by_length and mask is not None and mask.ndim == 2
        self.lengths = mask.sum(axis=1) if group else None
        # where each model came from, to go back to after the run (`release`)
        models = [student.module] + ([teacher.module] if teacher is not None else [])
        self.homes = [(m, module_device(m)) for m in models]
        for m, _ in self.homes:
            m.to(self.device)

    def shard(self, epoch: int) -> np.ndarray:
        """This process's rows for `epoch`: a seeded permutation, equal shares per process; with
        `group_by_length`, batches are cut from length-sorted windows of `GROUP_WINDOW` batches
        and shuffled (as Hugging Face Trainer's `group_by_length`), so they carry less padding."""
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.n)
        own = perm[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        if self.lengths is None:
            return own
        b = self.cfg.batch_size
        window = b * GROUP_WINDOW
        batches = []
        for start in range(0, len(own), window):
            chunk = own[start : start + window]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + b] for i in range(0, len(chunk), b)]
        return np.concatenate([batches[i] for i in rng.permutation(len(batches))])

    def release(self) -> None:
        """Move the student and the teacher back to the devices they came on."""
        for m, home in self.homes:
            m.to(home)

    def precise_bn(self, score: float) -> tuple[float, dict | None]:
        """`precise_bn` on the student, whose validation score is `score`."""
        return precise_bn(self.student, self.data, self.cfg.batch_size, self.seed, score)

    def labels_of(self, sel: np.ndarray) -> torch.Tensor | None:
        return None if self.labels is None else self.labels[sel]

    def teacher_run(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The teacher's output on `batch` and the features its taps caught, in fp32 (run under
        `train_autocast`; the teacher cache holds fp32)."""
        with torch.no_grad(), self.objective.autocast():
            out = self.teacher.module(**batch)  # type: ignore[union-attr]
        return out.float(), self.t_taps.take() if self.t_taps else {}

    def teacher_outputs(
        self, batch: dict[str, torch.Tensor], sel: np.ndarray, changed: np.ndarray | None = None
    ) -> tuple[torch.Tensor, dict]:
        """The teacher's logits and features on `batch`, rows `sel` (perturbed where `changed`):
        the precomputed logits when no feature is tapped and no row perturbed, else from the
        teacher cache, which runs the teacher on the rows it does not hold (its logits equal the
        precomputed ones up to float rounding; those are then not read)."""
        if changed is None:
            if self.t_logits is not None and self.t_taps is None:
                return self.t_logits[sel], {}
            changed = np.zeros(len(sel), dtype=bool)
        return self.cache.outputs(batch, sel, changed, self.teacher_run)

    def targets(
        self, sel: np.ndarray, epoch: int, step: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None, dict]:
        """(batch, teacher logits, labels, teacher features) for rows `sel`, on the training
        device; with augmentation (on the host) the teacher labels the perturbed batch now (its
        class is the perturbed rows' label)."""
        batch = self.data.rows(sel)
        if self.augment is None:
            return self.placed(batch, sel)
        rng = np.random.default_rng([self.seed, epoch, step, self.rank])
        batch, changed = self.augment(batch, rng, self.cfg.augment_prob)
        return self.placed(batch, sel, changed)

    def placed(
        self, batch: dict[str, torch.Tensor], sel: np.ndarray, changed: np.ndarray | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None, dict]:
        """`targets` of host `batch`, rows `sel` (perturbed where `changed`): the batch and its
        labels moved to the training device, the teacher's outputs on it there."""
        batch, labels = on_device((batch, self.labels_of(sel)), self.device)
        t_logits, feats = on_device(self.teacher_outputs(batch, sel, changed), self.device)
        if labels is not None and changed is not None and changed.any():
            rows = torch.from_numpy(np.flatnonzero(changed)).to(self.device)
            labels = labels.clone()
            labels[rows] = t_logits[rows].argmax(1).to(labels.dtype)
        return batch, t_logits, labels, feats

    def prepare(
        self, opt_state: dict | None = None, proj_state: dict | None = None
    ) -> tuple[Any, Any]:
        """Create projections (one probe batch), then the optimizer over student + projections,
        and wrap both for the accelerator (DDP when launched so)."""
        sel = np.arange(min(self.n, self.cfg.batch_size))
        was_training = self.objective.training
        self.objective.eval()
        batch, t_logits, labels, feats = self.placed(self.data.rows(sel), sel)
        with torch.no_grad():
            self.objective.projections.probe(lambda: self.objective(batch, t_logits, labels, feats))
        self.objective.train(was_training)
        if proj_state:
            self.objective.projections.load_state_dict(proj_state)
        # fused: one kernel over all parameters (CPU and CUDA); the sentiment student's 17.4 M
        # parameters step in 0.022 s against 0.10-0.13 s for the default, every batch
        opt = torch.optim.AdamW(
            self.objective.parameters(),
            lr=self.cfg.lr,
            weight_decay=self.cfg.weight_decay,
            fused=True,
        )
        if opt_state:
            opt.load_state_dict(opt_state)
        return self.acc.prepare(self.objective, opt)


def _pruned_heads(student: ModelAdapter) -> dict[int, list[int]]:
    """Which heads a transformer student's layers lost (`head_records`), which a checkpoint's
    shapes do not tell: its config.json names them as an uninterrupted run's."""
    from kdc.models.pruned_config import head_records

    return head_records(student.model) if student.family == "transformer" else {}  # type: ignore[attr-defined]


def _restore(student: ModelAdapter, state: dict) -> None:
    """Load a checkpoint's student weights, re-shaping a model pruned since it was built."""
    from kdc.models.pruned_config import restore_head_records

    weights = state["model"]
    if state.get("pruned_heads"):
        restore_head_records(student.model, state["pruned_heads"])  # type: ignore[attr-defined]
    if any(
        tuple(v.shape) != tuple(weights[k].shape)
        for k, v in student.module.state_dict().items()
        if k in weights
    ):
        apply_shapes(student.module, {k: list(v.shape) for k, v in weights.items()})
        sync_after_pruning(student)
    student.module.load_state_dict(weights)


def distill(
    student: ModelAdapter,
    data: DistillData,
    cfg: DistillConfig,
    seed: int,
    *,
    teacher: ModelAdapter | None = None,
    pruning: GradualPruning | None = None,
    checkpoint: Checkpoint | None = None,
    progress: Progress | None = None,
    on_step: Steps | None = None,
) -> DistillResult:
    """Train `student` in place, telling `progress` of each epoch and `on_step` of each step.
    `cfg.select`: keep the last epoch, or restore the epoch with the best validation score
    (after pruning finished; a tie goes to the later epoch, and the untrained student is kept
    only if every epoch scores below it)."""
    torch.manual_seed(seed)
    tr = _Trainer(student, data, cfg, seed, teacher, pruning)
    try:
        s, resumed, earlier_s = _run(tr, checkpoint, progress, on_step)
    finally:
        tr.release()  # the student is saved, exported and pruned further on the host
    if s["kept_model"]:
        student.module.load_state_dict(s["kept_model"])
    student.module.eval()
    return DistillResult(
        s["history"],
        s["kept_epoch"],
        s["kept_metric"],
        [{"name": n, "weight": w, "params": p} for n, w, p in tr.objective.specs],
        resumed,
        tr.cache.stats() if tr.cache.ran else None,
        earlier_s,
        s["kept_bn"],
    )


def _run(
    tr: _Trainer,
    checkpoint: Checkpoint | None,
    progress: Progress | None,
    on_step: Steps | None,
) -> tuple[dict, int | None, float]:
    """Train (or continue from `checkpoint`); returns the training state, the epoch continued
    from and the earlier runs' training time."""
    student, data, cfg, pruning = tr.student, tr.data, tr.cfg, tr.pruning
    state = checkpoint.load() if checkpoint else None
    s = {
        "epoch": 0,
        "step": 0,
        "history": [],
        "kept_metric": -1.0,
        "kept_epoch": -1,
        "kept_model": {},
        "kept_bn": None,
        "top": -1.0,
        "stale": 0,
        "prune_done": 0,
        "prune_sizes": {},
        "elapsed_s": 0.0,
    }
    if state is None:  # epochs must beat the starting point to count as improvements
        s["kept_metric"] = s["top"] = evaluate(student, data)
        if cfg.select == "best":
            s["kept_model"] = _tensor_state(student.module)
    else:
        s.update({k: state[k] for k in s if k in state})
        _restore(student, state)
    if pruning is not None:  # over the first `prune.epochs` epochs (default: half)
        epochs = pruning.cfg.epochs or max(1, cfg.epochs // 2)
        span = min(tr.total, epochs * tr.steps_per_epoch)
        pruning.start(span, s["prune_done"], s["prune_sizes"])
        s["prune_sizes"] = pruning.sizes  # the unpruned student's, which step targets scale
    resumed, earlier_s = (s["epoch"], s["elapsed_s"]) if state else (None, 0.0)
    started = time.perf_counter() - earlier_s  # the checkpoint's clock continues
    for taps in (tr.s_taps, tr.t_taps):
        if taps:
            taps.attach()
    try:
        model, opt = tr.prepare(state and state["optimizer"], state and state["projections"])
        if state is not None:  # after the projections drew their (overwritten) initial weights
            restore_rng(state, tr.device)
        _epochs(tr, s, model, opt, checkpoint, progress, on_step, started)
    finally:
        for taps in (tr.s_taps, tr.t_taps):
            if taps:
                taps.detach()
    return s, resumed, earlier_s


def _epochs(
    tr: _Trainer,
    s: dict,
    model: Any,
    opt: Any,
    checkpoint: Checkpoint | None,
    progress: Progress | None,
    on_step: Steps | None,
    started: float,
) -> None:
    cfg, pruning = tr.cfg, tr.pruning
    for epoch in range(s["epoch"], cfg.epochs):
        # stopped early (checked before each epoch, so a run resumed after that one stays
        # stopped), or max_steps reached: no epoch that trains nothing is run
        if s["step"] >= tr.total or (
            cfg.early_stopping_patience and s["stale"] >= cfg.early_stopping_patience
        ):
            break
        model.train()
        losses, parts = [], []
        order = tr.shard(epoch)
        for start in range(0, len(order), cfg.batch_size):
            if s["step"] >= tr.total:
                break
            sel = order[start : start + cfg.batch_size]
            loss = model(*tr.targets(sel, epoch, s["step"]))
            opt.zero_grad()
            tr.acc.backward(loss)
            s["step"] += 1
            if on_step:
                on_step(s["step"], tr.total)
            if pruning is not None and pruning.due(s["step"] - 1):
                pruning.step()  # gradients of this batch feed Taylor importance
                s.update(
                    prune_done=pruning.done,
                    kept_metric=-1.0,
                    kept_epoch=-1,
                    kept_model={},
                    kept_bn=None,
                    top=-1.0,
                    stale=0,
                )
                model, opt = tr.prepare()
                model.train()
                continue
            tr.acc.clip_grad_norm_(model.parameters(), 1.0)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(s["step"] - 1, tr.total)
            opt.step()
            losses.append(loss.item())
            parts.append(dict(tr.objective.parts))
        acc, bn = tr.precise_bn(evaluate(tr.student, tr.data))
        rec = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else None,
            "losses": {k: float(np.mean([p[k] for p in parts])) for k in parts[0]} if parts else {},
            "val_accuracy": acc,
            "steps": s["step"],
            "params": tr.student.params(),
            **({"precise_bn": bn} if bn else {}),
        }
        s["history"].append(rec)
        if progress:
            progress(epoch + 1, cfg.epochs, rec)
        if pruning is None or pruning.finished:
            improved = acc > s["top"]
            s.update(top=max(acc, s["top"]), stale=0 if improved else s["stale"] + 1)
            if cfg.select == "last":
                s.update(kept_metric=acc, kept_epoch=epoch, kept_bn=bn)
            elif acc >= s["kept_metric"]:  # a tie goes to the later, more trained epoch
                s.update(
                    kept_metric=acc,
                    kept_epoch=epoch,
                    kept_model=_tensor_state(tr.student.module),
                    kept_bn=bn,
                )
        s["epoch"], s["elapsed_s"] = epoch + 1, time.perf_counter() - started
        if checkpoint is not None and tr.acc.is_main_process:
            checkpoint.save(
                {
                    **s,
                    "model": _tensor_state(tr.student.module),
                    "pruned_heads": _pruned_heads(tr.student),
                    "projections": _tensor_state(tr.objective.projections),
                    "optimizer": opt.state_dict(),
                    **rng_state(tr.device),
                }
            )
        tr.acc.wait_for_everyone()
    if pruning is not None and not pruning.finished:  # too few steps to spread the schedule
        while not pruning.finished:
            pruning.step()
        acc, bn = tr.precise_bn(evaluate(tr.student, tr.data))
        s.update(
            kept_metric=acc,
            kept_bn=bn,
            kept_epoch=s["epoch"] - 1,
            kept_model=_tensor_state(tr.student.module),
        )
