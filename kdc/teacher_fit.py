"""Whether a teacher fits the data: as many outputs as the data has classes, and an input it
can take."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdc.errors import UserError, first_line, listed
from kdc.models.base import ModelAdapter

if TYPE_CHECKING:
    from torch import nn

    from kdc.data.base import Dataset
    from kdc.pipeline import Context


def _probe_outputs(ctx: Context, teacher: ModelAdapter) -> int:
    """The teacher's output count, from a forward pass on the first eval row; a teacher that
    cannot take the data's input (channels, size) is a UserError: naming data.channels where
    the data's channels are not those its first conv reads. So is one that takes that row but
    not a batch of the first two (kdc trains, exports and runs it on batches)."""
    from torch import nn

    from kdc.data import channel_mismatch

    split = ctx.dataset.eval
    features = split.take([0]).features
    try:
        outputs = teacher.forward_numpy(teacher.encode(features)).shape[-1]
    except (RuntimeError, ValueError, TypeError) as e:
        field = "data.eval" if ctx.cfg.data.eval else "data.source"
        shape = getattr(features, "shape", None)
        conv = next((m for m in teacher.module.modules() if isinstance(m, nn.Conv2d)), None)
        want = conv.in_channels if conv is not None else None
        if want is not None and shape is not None and len(shape) == 4 and want != shape[1]:
            raise channel_mismatch(want, shape[1], "its first conv's in_channels").located(
                ctx.cfg.source_file
            ) from None
        what = f"input of shape {'x'.join(map(str, shape))}" if shape else "input"
        raise UserError(
            f"the teacher failed on the first row of {field} ({what}): {first_line(e)}",
            source=ctx.cfg.source_file,
            field=field,
            fix="give the data the teacher was trained on (its channels: data.channels 1 or 3; "
            "data.image_size), or the teacher for this data",
        ) from None
    if len(split) > 1:
        _check_batch(ctx, teacher, split.take([0, 1]).features)
    return outputs


def _check_batch(ctx: Context, teacher: ModelAdapter, features: Any) -> None:
    """A UserError unless the teacher gives one output row per input row of `features`."""
    from kdc.models import teacher_kind
    from kdc.preflight import CODE_TEACHERS

    rows = len(features)
    try:
        got = teacher.forward_numpy(teacher.encode(features)).shape
        why = None if got[:1] == (rows,) else f"it returned shape {tuple(got)}"
    except (RuntimeError, ValueError, TypeError) as e:
        why = first_line(e)
    if why:
        raise UserError(
            f"the teacher takes one image but not a batch of {rows} ({why})",
            source=ctx.cfg.source_file,
            field=CODE_TEACHERS.get(teacher_kind(ctx.cfg), "teacher"),
            fix="keep the batch dimension in its forward (x.flatten(1), not x.reshape(1, -1) "
            "or x.view(-1)): kdc trains, exports and runs it on batches",
        )


def check_label_count(ctx: Context, teacher: ModelAdapter) -> None:
    """The teacher's classifier must have as many outputs as the data has classes."""
    if ctx.cfg.task == "sentence-embedding":
        return
    n = getattr(getattr(teacher, "config", None), "num_labels", None)
    if n is None:
        n = _probe_outputs(ctx, teacher)
    if n is not None and n != ctx.dataset.num_labels:
        raise label_count_error(ctx.cfg.source_file, ctx.dataset, n)


def label_count_error(source: str, ds: Dataset, outputs: int) -> UserError:
    """A teacher of `outputs` outputs for data `ds` of another number of classes."""
    from kdc.data.labels import label_field

    return UserError(
        f"the teacher has {outputs} outputs but the data has "
        f"{ds.num_labels} classes: {listed(ds.label_names)}",
        source=source,
        field=label_field(ds.kind),
        fix="use the data the teacher was trained on, or the teacher for these classes",
    )


def meta_outputs(model: nn.Module, shape: tuple[int, ...]) -> int | None:
    """The output count of a CNN built on PyTorch's meta device, run there on two inputs of
    `shape` (no memory, no arithmetic); None where it cannot run there or its output (or a
    tuple's first) is not batch × outputs."""
    import torch

    try:
        with torch.no_grad():
            out = model(torch.empty((2, *shape), device="meta"))
    except Exception:  # noqa: BLE001 - the user's code: the run's own checks catch the rest
        return None
    out = out[0] if isinstance(out, (tuple, list)) and out else out
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None
