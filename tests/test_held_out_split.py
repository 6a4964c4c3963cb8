"""The eval split data.eval_fraction holds out of data.source: stratified by class, as
scikit-learn's `train_test_split(stratify=labels)` holds it out, drawn by data.split_seed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from test_data_loading import cnn_cfg, csv_file, text_cfg
from tiny import image_folder

from kdc import fingerprint
from kdc.data import load_dataset
from kdc.data.labels import HELD_OUT_VERSION, held_out_order


def _eval_counts(ds) -> dict[str, int]:
    return dict(Counter(ds.label_names[i] for i in ds.eval.labels))


def test_an_image_folders_eval_split_holds_out_each_class_alike(tmp_path):
    """40 images of each of 3 classes, a fifth held out: 8 of each (9/3/12 before)."""
    image_folder(tmp_path, {"cat": 40, "dog": 40, "fox": 40})
    for seed in (0, 1, 7):
        cfg = cnn_cfg(tmp_path, source="imgs", image_size=8, eval_fraction=0.2, split_seed=seed)
        ds = load_dataset(cfg)
        assert _eval_counts(ds) == {"cat": 8, "dog": 8, "fox": 8}
        assert len(ds.train) == 96


def test_a_text_files_eval_split_is_stratified_and_drawn_by_the_seed(tmp_path):
    """Classes of 60, 30 and 10 rows, a fifth held out: 12, 6 and 2; another seed draws other
    rows, the same seed the same."""
    labels = ["pos"] * 60 + ["neg"] * 30 + ["mixed"] * 10
    rows = "".join(f"film {i},{label}\n" for i, label in enumerate(labels))
    csv_file(tmp_path / "d.csv", "text,label\n" + rows)

    def held(seed: int) -> list[str]:
        ds = load_dataset(text_cfg(tmp_path, source="d.csv", eval_fraction=0.2, split_seed=seed))
        assert _eval_counts(ds) == {"pos": 12, "neg": 6, "mixed": 2}
        return list(ds.eval.features)

    assert held(0) == held(0) != held(1)


@pytest.mark.parametrize(
    ("counts", "n_eval", "held"),
    [
        ([40, 40, 40], 24, [8, 8, 8]),
        ([10, 9, 1], 4, [2, 2, 0]),  # 2, 1.8, 0.2: the largest remainder takes the row left
        ([10, 9, 1], 18, [9, 8, 1]),  # 9, 8.1, 0.9
        ([3, 1], 1, [1, 0]),
        ([50, 30, 2], 8, [4, 3, 1]),  # 4.9, 2.9, 0.2: the small class takes one of the largest
        ([40, 40, 1], 8, [4, 4, 0]),  # a class's only row is trained on
    ],
)
def test_each_class_gives_its_share_of_the_held_out_rows(counts, n_eval, held):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    order = held_out_order(len(labels), labels, n_eval, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert np.bincount([labels[i] for i in order[:n_eval]], minlength=len(counts)).tolist() == held


def test_unlabelled_rows_are_held_out_as_before():
    """Texts without labels (an embedding teacher's): the seed's permutation, as before."""
    order = held_out_order(4, [], 2, np.random.default_rng(3))
    assert order.tolist() == np.random.default_rng(3).permutation(4).tolist()


def test_a_held_out_split_changes_the_inputs_fingerprint_an_eval_file_does_not(
    tmp_path, monkeypatch
):
    """The stratified split holds out other rows than before: a run resumed from one that held
    out the unstratified split trains again (its input fingerprint differs); a run given
    data.eval, or an embedding teacher's, hashes as before."""
    csv_file(tmp_path / "d.csv", "text,label\nfilm a,pos\nfilm b,neg\n")
    carved = text_cfg(tmp_path, source="d.csv")
    given = text_cfg(tmp_path, source="d.csv", eval="d.csv")
    hashed: list[dict] = []
    monkeypatch.setattr(fingerprint, "sha256_json", lambda obj: hashed.append(obj) or "")
    fingerprint.inputs_fingerprint(carved)
    fingerprint.inputs_fingerprint(given)
    assert [found.get("split") for found in hashed] == [HELD_OUT_VERSION, None]


@pytest.mark.parametrize("splits", [{"train": 40, "test": 10}, {"train": 40}])
def test_a_datasets_directorys_test_split_hashes_as_before(tmp_path, monkeypatch, splits):
    """A saved DatasetDict with a labelled test split is evaluated on it, no rows held out: its
    run hashes as before (no needless retraining on --resume); one without holds them out."""
    from test_data_loading import _save_dataset

    _save_dataset(tmp_path / "ds", splits, ["neg", "pos"])
    hashed: list[dict] = []
    monkeypatch.setattr(fingerprint, "sha256_json", lambda obj: hashed.append(obj) or "")
    fingerprint.inputs_fingerprint(text_cfg(tmp_path, source="ds"))
    assert hashed[0].get("split") == (None if "test" in splits else HELD_OUT_VERSION)
