"""docs/internals.md's run directory lists what a run writes, by the names kdc uses."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

import yaml
from tiny import write_yaml

from kdc import api

DOC = Path(__file__).resolve().parents[1] / "docs" / "internals.md"


def documented() -> tuple[set[str], set[str]]:
    """The run-directory block's (files, folders whose contents are not listed), as paths
    relative to the run with `<...>` as `*`."""
    block = re.search(r"```\nruns/<name>/\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block, "no run directory block in docs/internals.md"
    files, folders, parents, stack = set(), set(), set(), []
    for line in block[1].splitlines():
        depth = (len(line) - len(line.lstrip())) // 2  # 1: at the run directory's top
        del stack[depth - 1 :]
        parents.add("".join(stack))
        name = re.sub(r"<[^>]+>", "*", line.split()[0])
        (folders if name.endswith("/") else files).add("".join(stack) + name)
        if name.endswith("/"):
            stack.append(name)
    return files, folders - parents


def test_the_documented_run_directory_is_what_a_run_writes(cnn_project, tmp_path):
    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(cnn_project.parent / cfg["teacher"]["weights"])
    cfg["distill"]["epochs"] = 1
    run = tmp_path / "run"
    api.compress(write_yaml(tmp_path / "model.yaml", cfg), "jetson", run, quiet=True)
    files, leaves = documented()
    written = [p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()]
    unlisted = [
        w for w in written if not any(fnmatch(w, f) for f in files | {d + "*" for d in leaves})
    ]
    assert not unlisted, f"written but not in docs/internals.md: {unlisted}"
    for must in ("manifest.json", "report.json", "build/engines.json", "verify/metrics.json"):
        assert must in files and must in written
    assert {"build/onnxruntime/model_fp32.onnx", "build/bundle/build.sh"} <= set(written)
