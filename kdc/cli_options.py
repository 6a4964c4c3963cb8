"""The options and arguments several `kdc` commands share, each with its help text (kdc.cli,
kdc.cli_tools): one definition per kind of argument, so each says the same in every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Target = Annotated[str, typer.Option("--target", "-t", help="Profile name, alias or YAML path.")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (runs/<name>).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
# compress and verify end with the summary, which -q cuts down too
QuietSummary = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars or result table: warnings, constraint lines and the verdict.",
    ),
]
Shapes = Annotated[
    list[str] | None,
    typer.Option(
        "--shape",
        help="NAME:1x128 (repeatable); attention_mask, token_type_ids and position_ids follow "
        "input_ids unless given.",
    ),
]
Batch = Annotated[
    int | None,
    typer.Option(min=1, help="Batch size (default: the --shape values' first dimension, else 1)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

# arguments: what file or directory each is, and what writes it
Config = Annotated[Path, typer.Argument(help="The model.yaml (kdc init writes one).")]
RunDir = Annotated[
    Path, typer.Argument(help="A run directory kdc compress wrote (runs/<name>, or its --out).")
]
OnnxModel = Annotated[Path, typer.Argument(help="An ONNX model file, e.g. RUN/export/model.onnx.")]
Report = Annotated[
    Path,
    typer.Argument(
        help="A run's report.json (kdc compress and verify write it in the run directory)."
    ),
]
ModelDir = Annotated[
    Path,
    typer.Argument(
        help="The teacher: a Hugging Face model directory, a CNN student kdc saved, or a "
        ".safetensors weights file (or a directory holding one)."
    ),
]
ProfileName = Annotated[
    str, typer.Argument(help="A profile name or alias (kdc profiles list), or a YAML path.")
]
