"""Work that grows with the data only where a stage needs every row."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import cnn_config, config_of, write_yaml

from kdc import api
from kdc.config import load_config
from kdc.data import load_dataset
from kdc.data.base import permuted
from kdc.models.hf import HFTextAdapter


def _encoded_rows(monkeypatch) -> list[int]:
    """The number of rows of each call of the text teacher's encode, as they come."""
    calls: list[int] = []
    encode = HFTextAdapter.encode
    monkeypatch.setattr(
        HFTextAdapter,
        "encode",
        lambda self, rows, **kw: calls.append(len(rows)) or encode(self, rows, **kw),
    )
    return calls


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
    calls = _encoded_rows(monkeypatch)
    n_train = 400  # tiny.make_bert_project's train.csv
    for stage in (api.search, api.distill, api.export, api.build):
        calls.clear()
        stage(path, "host", run, quiet=True)
        assert (n_train in calls) == (stage is api.distill), stage.__name__


def test_an_evolution_search_run_alone_encodes_only_the_rows_it_scores_on(
    bert_project, tmp_path, monkeypatch
):
    """Search scores students on one batch of training rows (and derives them from an example
    row): run alone, it tokenizes those rows, not the whole split; the batch is the rows the
    whole split's encoding holds."""
    cfg = config_of(bert_project)
    cfg["search"] = {"strategy": "evolution", "population": 2, "cycles": 1, "batch_size": 8}
    path = write_yaml(tmp_path / "model.yaml", cfg)
    calls = _encoded_rows(monkeypatch)
    api.search(path, "host", tmp_path / "run", quiet=True)
    assert calls and max(calls) <= 8, calls  # the scoring batch, the example rows
    ctx = api.open_run(path, "host", tmp_path / "run", quiet=True)
    rows = np.array([3, 7, 200])
    alone = ctx.encode("train", rows)  # nothing encoded yet: those rows alone
    whole = ctx.encode("train")
    for got in (alone, ctx.encode("train", rows)):  # the second sliced from the whole split
        assert {k: v.tolist() for k, v in got.items()} == {
            k: v[rows].tolist() for k, v in whole.items()
        }


def test_permuted_reorders_an_array_in_place_and_a_list_anew():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        rows = rng.random((n, 3, 2, 2)).astype(np.float32)
        for order in (rng.permutation(n), np.arange(n), np.roll(np.arange(n), 1)):
            want, got = rows[order], rows.copy()
            assert permuted(got, order) is got
            np.testing.assert_array_equal(got, want)
    assert permuted(["a", "b", "c"], np.array([2, 0, 1])) == ["c", "a", "b"]


@pytest.mark.parametrize("normalize", [False, True])
def test_a_held_out_eval_split_does_not_copy_the_images(tmp_path, normalize):
    """An eval split held out of the images read (data.eval_fraction) and the training split are
    views of the one array read (normalized in place), not copies beside it; with limit_train
    the eval split is an array of its own, so the rows left out are not kept."""
    data = {"source": "sklearn:digits", "eval_fraction": 0.25}
    if normalize:
        data |= {"mean": [0.3], "std": [0.2]}
    cfg = cnn_config(weights=None)
    cfg["data"] = data
    ds = load_dataset(load_config(write_yaml(tmp_path / "model.yaml", cfg)))
    assert (len(ds.train), len(ds.eval)) == (1348, 449)
    assert ds.train.features.base is ds.eval.features.base is not None
    cfg["data"] = {**data, "limit_train": 100}
    ds = load_dataset(load_config(write_yaml(tmp_path / "model.yaml", cfg)))
    assert (len(ds.train), len(ds.eval)) == (100, 449)
    assert ds.eval.features.base is None and ds.train.features.base is None
