"""PyTorch → ONNX (optimum-onnx for Hugging Face classifiers, else the TorchScript exporter;
opset ≥ 17, dynamic batch and sequence axes), checked and simplified."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import torch

from kdc.errors import UserError, first_line
from kdc.export.cls_only import cls_only_last_layer
from kdc.export.optimum_export import NotExportable, check_exportable, export_optimum
from kdc.models.base import ModelAdapter
from kdc.rundir import atomic_path


def torch_graph(
    adapter: ModelAdapter,
    example: dict[str, np.ndarray],
    tmp: Path | BinaryIO,
    opset: int,
    output_name: str,
    *,
    weights: bool = True,
) -> None:
    """`adapter.module` exported by the TorchScript exporter to `tmp` (a path or a file object)
    on the first two rows of `example`; an operator it cannot export is a UserError. `weights`
    False: the graph without its weights, unfolded (whether it exports, at about half the time
    and memory)."""
    module = adapter.module.eval()
    args = tuple(torch.from_numpy(example[k][:2]) for k in adapter.input_names)
    with _held_stdout() as failed:
        try:
            torch.onnx.export(
                module,
                args,
                str(tmp) if isinstance(tmp, Path) else tmp,
                input_names=adapter.input_names,
                output_names=[output_name],
                dynamic_axes=adapter.dynamic_axes(),
                opset_version=opset,
                dynamo=False,
                export_params=weights,
                do_constant_folding=weights,
            )
        except torch.onnx.errors.UnsupportedOperatorError as e:
            failed()
            raise _unexportable(e, opset) from None


def _unexportable(e: Exception, opset: int) -> UserError:
    """An operator of the network the TorchScript exporter has no ONNX export for, at `opset`
    or at all: the user's model code to change, or export.opset where a later one has it."""
    later = re.search(r"added in version (\d+)", str(e))
    if later:
        return UserError(
            f"{first_line(e).split('. ')[0]}",
            field="export.opset",
            fix=f"set export.opset: {later.group(1)}",
        )
    return UserError(
        f"the network's code uses an operator ONNX cannot express: {first_line(e)}",
        field="teacher",
        fix="replace it in the teacher's code with operators ONNX has (the student is built "
        "from that code, and its engines run ONNX)",
    )


@contextmanager
def _held_stdout() -> Iterator[Callable[[], None]]:
    """File descriptor 1 held in a temporary file, written out on leaving unless the callable
    given was called: the TorchScript exporter's C++ side prints its whole graph there as it
    fails, before the one-line error kdc prints instead."""
    sys.stdout.flush()
    saved, dropped = os.dup(1), []
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 1)
            try:
                yield lambda: dropped.append(True)
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                held.seek(0)
                out = b"" if dropped else held.read()
                while out:
                    out = out[os.write(1, out) :]
    finally:
        os.close(saved)


def _optimum_graph(
    adapter: ModelAdapter, example: dict[str, np.ndarray], tmp: Path, opset: int, output_name: str
) -> None:
    onnx.save(export_optimum(adapter, opset), str(tmp))


EXPORTERS: dict[str, Callable[[ModelAdapter, dict, Path, int, str], None]] = {
    "optimum": _optimum_graph,
    "torch": torch_graph,
}


def choose_exporter(adapter: ModelAdapter, requested: str, output_name: str) -> tuple[str, str]:
    """The exporter to use and why: `auto` takes optimum-onnx where it supports the model, the
    TorchScript exporter otherwise; `optimum` fails when it cannot be used."""
    if requested == "torch":
        return "torch", "requested (export.exporter: torch)"
    try:
        check_exportable(adapter, output_name)
    except NotExportable as e:
        if requested == "optimum":
            raise optimum_refused(str(e)) from None
        return "torch", f"optimum-onnx not used: {e}"
    return "optimum", "optimum-onnx supports this architecture"


def optimum_refused(why: str) -> UserError:
    """The error of `export.exporter: optimum` for a model optimum-onnx does not export."""
    return UserError(
        f"optimum-onnx cannot export this model: {why}",
        field="export.exporter",
        fix="use auto or torch",
    )


def export_onnx(
    adapter: ModelAdapter,
    example: dict[str, np.ndarray],
    path: Path,
    *,
    opset: int = 17,
    output_name: str = "logits",
    simplify: bool = True,
    exporter: str = "torch",
    cls_only: bool = False,
) -> Path:
    """Export `adapter.module` with named inputs and dynamic axes through `exporter` (a key of
    EXPORTERS), run onnx.checker and shape inference, and simplify with onnxslim when available.
    `cls_only`: the last layer computes only [CLS] where the model allows it (cls_only.py).
    Written atomically."""
    with (
        atomic_path(path) as tmp,
        warnings.catch_warnings(),
        cls_only_last_layer(adapter, cls_only),
        adapter.exporting(),
    ):
        warnings.simplefilter("ignore")
        EXPORTERS[exporter](adapter, example, tmp, opset, output_name)
        model = onnx.load(str(tmp))
        if simplify:
            model = _slim(model)
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model)
        onnx.save(model, str(tmp))
    return path


def opset_of(path: Path) -> int:
    """The default-domain opset an ONNX file was exported with."""
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        return model
    try:
        return onnxslim.slim(model)
    except Exception:  # a failed simplification must not fail the export
        return model
