"""distill's input hash holds `prune.CNN_VERSION` for a pruned CNN student (2: each step narrows
a layer to kdc's own target, a grouped conv's channels too, which torch-pruning rounded to
`round_to` in units of a group's and so pruned further): a run pruned before (hashed without
it) distills again; an unpruned CNN's or a transformer's run does not read it."""

from __future__ import annotations

import yaml
from test_resume_versions import _hashes, _with
from tiny import bert_config


def test_a_pruned_cnn_distills_again_when_its_pruning_changes(cnn_project, monkeypatch):
    from kdc.compress import prune

    cnn = yaml.safe_load(cnn_project.read_text())
    configs = {
        "cnn": cnn,
        "cnn pruned": _with(cnn, "prune.enabled", True),
        "text pruned": _with(bert_config(), "prune.enabled", True),
    }
    now = {k: _hashes(c)["distill"] for k, c in configs.items()}
    assert prune.CNN_VERSION == 2
    monkeypatch.setattr(prune, "CNN_VERSION", 1)
    before = {k: _hashes(c)["distill"] for k, c in configs.items()}
    assert {k for k in configs if now[k] != before[k]} == {"cnn pruned"}
