"""Settings a config gives that a run does not use are warned in one format, as an error names
a bad one: the config file, the fields, why, and the fix (what makes the run use them, or drop
them). Some named no file, and some no fix."""

from __future__ import annotations

import re

import pytest
from tiny import cnn_config, write_yaml

from kdc.config import load_config
from kdc.preflight import config_warnings, target_warnings
from kdc.profiles import load_profile

# what a config sets (over cnn_config's) and its target -> its note's fields, and those to drop
UNUSED = {
    "sklearn's image size": (
        {"data": {"image_size": 16, "channels": 3}},
        "host",
        "data.channels, data.image_size",
        "data.channels, data.image_size",
    ),
    "a fixed student under a search": (
        {"search": {"strategy": "evolution"}},
        "host",
        "student.width",
        "student.width",
    ),
    "a fixed student's search space": (
        {"search": {"space": {"stage_width": {"min": 0.5}}}},
        "host",
        "search.space",
        "search.space",
    ),
    "reduce_range without INT8": (
        {"quantize": {"precision": "fp32", "reduce_range": True}},
        "host",
        "quantize.reduce_range",
        "quantize.reduce_range",
    ),
    "QAT without INT8": (
        {"quantize": {"precision": "fp32", "method": "qat", "qat_epochs": 3}},
        "host",
        "quantize.method qat, quantize.qat_epochs",
        "quantize.method, quantize.qat_epochs",
    ),
    "a DLA core without TensorRT": (
        {"build": {"dla_core": 0}},
        "host",
        "build.dla_core",
        "build.dla_core",
    ),
    "max_batch without TensorRT": (
        {"build": {"max_batch": 8}},
        "host",
        "build.max_batch",
        "build.max_batch",
    ),
    "reduce_range in TensorRT's QAT": (
        {"quantize": {"method": "qat", "reduce_range": True}},
        "jetson",
        "quantize.reduce_range",
        "quantize.reduce_range",
    ),
}


@pytest.mark.parametrize("case", list(UNUSED))
def test_an_unused_setting_is_warned_naming_the_file_the_fields_and_the_fix(tmp_path, case):
    over, target, fields, drop = UNUSED[case]
    path = write_yaml(tmp_path / "m.yaml", cnn_config(weights=None, **over))
    cfg = load_config(path)
    notes = [*config_warnings(cfg), *target_warnings(cfg, load_profile(target))]
    (note,) = [n for n in notes if "not used" in n]
    fix = rf"\(fix: (.+, or )?drop {re.escape(drop)}\)"
    want = rf"{re.escape(str(path))}: {re.escape(fields)} not used: .+ {fix}"
    assert re.fullmatch(want, note), note
