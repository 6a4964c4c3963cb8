"""An image folder's classes are indexed by their folder names, `10` before `2`, as
torchvision's, `datasets`' and Keras's ImageFolder readers index them (a CNN trained by one has
its outputs in that order), not by the value of numeric names as a csv's integer labels are;
a run of such a folder indexed the other way is not resumed."""

from __future__ import annotations

import pytest
from tiny import cnn_config, image_folder, write_yaml

from kdc.config import load_config
from kdc.data import load_dataset
from kdc.errors import UserError

NUMBERED = {str(k): 4 for k in (0, 1, 2, 10)}


def _cfg(tmp_path):
    cfg = cnn_config(weights=None)
    cfg["data"] = {"source": "imgs", "image_size": 8, "eval_fraction": 0.25}
    return load_config(write_yaml(tmp_path / "model.yaml", cfg))


def test_numbered_class_folders_are_indexed_by_name_as_imagefolder_does(tmp_path):
    image_folder(tmp_path, NUMBERED)
    assert load_dataset(_cfg(tmp_path)).label_names == ["0", "1", "10", "2"]


def test_a_csvs_integer_labels_are_still_ordered_by_value(tmp_path):
    rows = "".join(f"t{i} w,{lab}\n" for i, lab in enumerate(["0", "1", "2", "10"] * 3))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    cfg = cnn_config(weights=None, task="text-classification")
    cfg["teacher"] = {"path": "t"}
    cfg["data"] = {"source": "d.csv", "eval_fraction": 0.25}
    ds = load_dataset(load_config(write_yaml(tmp_path / "model.yaml", cfg)))
    assert ds.label_names == ["0", "1", "2", "10"]


def test_the_fingerprint_of_numbered_class_folders_says_how_they_are_indexed(tmp_path):
    """Folders whose name order is their value order (0, 1, 2) keep the fingerprint they had;
    folders 0, 1, 2, 10, indexed otherwise before, do not."""
    from kdc.fingerprint import _data_fingerprint

    image_folder(tmp_path, {"0": 1, "1": 1, "2": 1})
    cfg = _cfg(tmp_path)
    assert all(isinstance(entry[0], str) for entry in _data_fingerprint(cfg, "imgs"))
    image_folder(tmp_path / "more", {"10": 1})
    (tmp_path / "more" / "imgs" / "10").rename(tmp_path / "imgs" / "10")
    assert ("classes", "by folder name") in _data_fingerprint(cfg, "imgs")


def test_an_eval_folders_class_that_training_lacks_is_still_refused(tmp_path):
    image_folder(tmp_path, {"a": 2, "b": 2})
    image_folder(tmp_path / "ev", {"a": 1, "c": 1})
    cfg = cnn_config(weights=None)
    cfg["data"] = {"source": "imgs", "eval": "ev/imgs", "image_size": 8}
    with pytest.raises(UserError) as e:
        load_dataset(load_config(write_yaml(tmp_path / "model.yaml", cfg)))
    assert e.value.field == "data.eval" and "['c']" in e.value.message, e.value
    assert "folder" in e.value.fix and "files" not in e.value.fix, e.value  # said "both files"
