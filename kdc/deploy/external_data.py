"""The files an ONNX model keeps its weights in beside itself (external data, as models over
2 GB must): listed, copied along with the model, hashed with it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from kdc.errors import UserError
from kdc.rundir import sha256_file, sha256_json


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                yield from _tensors(sub)


def external_data_files(path: Path | str) -> list[str]:
    """The locations (relative to the model's folder) of the files holding its external data."""
    model = onnx.load(str(path), load_external_data=False)
    found = [ExternalDataInfo(t).location for t in _tensors(model.graph) if uses_external_data(t)]
    out = list(dict.fromkeys(found))
    for loc in out:
        if Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise UserError(
                f"external data location '{loc}' is outside the model's folder",
                source=str(path),
                fix="save the model with its external data beside it (onnx.save(..., "
                "save_as_external_data=True, location='model.onnx.data'))",
            )
        if not (Path(path).parent / loc).is_file():
            raise UserError(
                f"external data file '{loc}' is missing",
                source=str(path),
                fix="keep the model's weight files beside it",
            )
    return out


def copy_onnx(src: Path | str, dst: Path | str) -> Path:
    """Copy an ONNX file to `dst` with its external data files, at the same relative places."""
    src, dst = Path(src), Path(dst)
    files = external_data_files(src)
    shutil.copyfile(src, dst)
    for loc in files:
        (dst.parent / loc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / loc, dst.parent / loc)
    return dst


def onnx_sha256(path: Path | str) -> str:
    """sha256 of an ONNX model: its file's, or with external data, of the file and its data."""
    files = external_data_files(path)
    if not files:
        return sha256_file(Path(path))
    parts = [sha256_file(Path(path))] + [[f, sha256_file(Path(path).parent / f)] for f in files]
    return sha256_json(parts)
