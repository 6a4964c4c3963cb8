"""Work that grows with the data only where a stage needs every row."""

from __future__ import annotations

from tiny import config_of, write_yaml

from kdc import api
from kdc.models.hf import HFTextAdapter


def test_stages_run_alone_encode_only_the_training_rows_they_read(
    bert_project, tmp_path, monkeypatch
):
    """Search (fixed), export and build take an example, calibration and held-out rows from the
    head of the training split: run alone (or resumed), they tokenize those rows, not all of
    them; distillation reads every row."""
    cfg = config_of(bert_project)
    cfg["distill"]["epochs"] = 1
    path = write_yaml(tmp_path / "model.yaml", cfg)
    run = tmp_path / "run"
    calls: list[int] = []
    encode = HFTextAdapter.encode
    monkeypatch.setattr(
        HFTextAdapter, "encode", lambda self, rows: calls.append(len(rows)) or encode(self, rows)
    )
    n_train = 400  # tiny.make_bert_project's train.csv
    for stage in (api.search, api.distill, api.export, api.build):
        calls.clear()
        stage(path, "host", run, quiet=True)
        assert (n_train in calls) == (stage is api.distill), stage.__name__
