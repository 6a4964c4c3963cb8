"""Export keeps the PyTorch student's outputs on the parity rows; verify reuses them only while
the student's weights and the eval inputs are the ones they were computed from, and the file
reads."""

from __future__ import annotations

import numpy as np
from tiny import config_of, write_yaml

from kdc import api
from kdc.models import load_student
from kdc.stages.export import REFERENCE, reference_key, student_reference


def test_verify_reuses_export_reference_only_for_the_same_student(cnn_project, tmp_path):
    cfg = config_of(cnn_project)
    cfg["distill"]["epochs"] = 1
    path = write_yaml(tmp_path / "model.yaml", cfg)
    run = tmp_path / "run"
    for stage in (api.search, api.distill, api.export):
        stage(path, "host", run, quiet=True)
    ctx = api.open_run(path, "host", run, quiet=True)
    student = load_student(run / "distill" / "student", ctx.cfg.data.max_length)
    saved = run / "export" / REFERENCE
    with np.load(saved) as f:
        outputs, key = f["outputs"], str(f["key"])
    fresh = student.forward_numpy({k: v[: len(outputs)] for k, v in ctx.encode("eval").items()})
    np.testing.assert_allclose(outputs, fresh, atol=1e-5)

    np.savez(saved, outputs=outputs + 1.0, key=key)  # a marker: reused, not recomputed
    np.testing.assert_allclose(student_reference(ctx, student), outputs + 1.0)

    weights = next((run / "distill" / "student").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")  # other weights: the key no longer matches
    assert reference_key(ctx, {k: v[: len(outputs)] for k, v in ctx.encode("eval").items()}) != key
    np.testing.assert_allclose(student_reference(ctx, student), fresh, atol=1e-5)
    saved.write_bytes(b"damaged")  # an unreadable file is recomputed, not an error
    np.testing.assert_allclose(student_reference(ctx, student), fresh, atol=1e-5)
