"""Each stage's resume hash reads only the config, versions and facets that stage uses."""

from __future__ import annotations

import yaml


def _hashes(cfg: dict, target: str = "host") -> dict[str, str]:
    from kdc.config import parse_config
    from kdc.pipeline import _stages, stage_hash
    from kdc.profiles import load_profile

    c, profile = parse_config(cfg, source="<test>"), load_profile(target)
    return {s.name: stage_hash(s, c, profile, "", "") for s in _stages()}


def _with(cfg: dict, dotted: str, value) -> dict:
    section, key = dotted.split(".")
    return {**cfg, section: {**cfg.get(section, {}), key: value}}


def test_stages_hash_only_the_config_they_read(cnn_project):
    """A stage's input hash changes with the config fields it reads and with no others; the
    report's with any (it records the whole config's hash, and its warnings)."""
    cfg = yaml.safe_load(cnn_project.read_text())
    base = _hashes(cfg)
    for dotted, value, changed in [
        ("constraints.max_accuracy_drop", 0.01, set()),
        ("quantize.calibration_size", 32, {"build"}),
        ("quantize.calibration", "entropy", {"build"}),
        ("verify.iterations", 50, {"verify"}),
        ("constraints.latency_budget_ms", 5.0, {"search"}),
        ("quantize.precision", "fp16", {"search", "build"}),
        ("verify.batch", 4, {"search", "build", "verify"}),
        ("quantize.method", "qat", {"distill", "build"}),
        ("export.cls_only_last_layer", False, {"search", "export"}),
        ("distill.teacher_cache_mb", 0, set()),
        ("export.atol", 0.5, {"export", "verify"}),  # verify judges each engine's parity by it
        ("export.min_cosine", 0.5, {"export", "verify"}),
        ("verify.threads", 2, {"build", "verify"}),  # build times the PTQ backends with it
        ("data.max_length", 32, {"search", "distill", "export", "build", "verify"}),
        ("build.softmax_floor", False, {"build"}),
        ("build.max_batch", 8, set()),  # it sizes TensorRT engines, which host does not build
        ("build.dla_core", 0, set()),  # as does the DLA core they are built for
    ]:
        new = _hashes(_with(cfg, dotted, value))
        assert {s for s in base if new[s] != base[s]} == changed | {"report"}, dotted
    jetson, batch8 = _hashes(cfg, "jetson"), _hashes(_with(cfg, "build.max_batch", 8), "jetson")
    assert {s for s in jetson if batch8[s] != jetson[s]} == {"build", "verify", "report"}
    agx, dla = _hashes(cfg, "agx-orin"), _hashes(_with(cfg, "build.dla_core", 0), "agx-orin")
    assert {s for s in agx if dla[s] != agx[s]} == {"search", "build", "verify", "report"}
    pruned_agx = {**cfg, "prune": {"enabled": True, "target_latency_ms": 1.0}}
    assert (
        _hashes(_with(pruned_agx, "build.dla_core", 1), "agx-orin")["distill"]
        != _hashes(pruned_agx, "agx-orin")["distill"]
    )  # pruning to a latency predicts it on the core
    no_trt = _with(cfg, "build.engines", ["onnxruntime"])  # a TensorRT target, TensorRT left out
    batch8 = _hashes(_with(no_trt, "build.max_batch", 8), "jetson")
    assert {s for s, h in _hashes(no_trt, "jetson").items() if batch8[s] != h} == {"report"}
    # QAT (in distill) reads the calibration rows, and pruning to a latency how it is predicted
    qat = _with(cfg, "quantize.method", "qat")
    assert (
        _hashes(_with(qat, "quantize.calibration_size", 32))["distill"] != _hashes(qat)["distill"]
    )
    pruned = {**cfg, "prune": {"enabled": True, "target_latency_ms": 1.0}}
    assert _hashes(_with(pruned, "verify.batch", 4))["distill"] != _hashes(pruned)["distill"]


def test_qat_retrains_where_its_7_bit_decision_changes(cnn_project, monkeypatch):
    """Whether QAT trains 7-bit weights (quantize.reduce_range; by default where this CPU's int8
    kernels saturate) is in distill's input hash: a resume with another decision re-trains, one
    with the same decision (auto or said) does not; PTQ's and TensorRT targets' distill do not
    read it."""
    import kdc.profiles
    from kdc.profiles import load_profile

    load_profile("host")  # the host profile is read once, of this machine's CPU
    cfg = yaml.safe_load(cnn_project.read_text())
    qat = _with(cfg, "quantize.method", "qat")
    pruned = {**qat, "prune": {"enabled": True, "target_latency_ms": 1.0}}

    def h(c: dict, reduce_range: bool | None = None, target: str = "host") -> str:
        return _hashes(_with(c, "quantize.reduce_range", reduce_range), target)["distill"]

    monkeypatch.setattr(kdc.profiles, "cpu_info", lambda: ("AMD EPYC", {"avx2"}))
    assert h(qat) == h(qat, True) != h(qat, False)
    assert h(pruned) == h(pruned, True) != h(pruned, False)
    assert h(cfg) == h(cfg, True) == h(cfg, False)  # PTQ: build's setting
    assert h(qat, target="jetson") == h(qat, True, "jetson")
    monkeypatch.setattr(kdc.profiles, "cpu_info", lambda: ("Xeon", {"avx2", "avx512_vnni"}))
    assert h(qat) == h(qat, False) != h(qat, True)


def test_qat_retrains_when_its_scheme_changes(cnn_project, monkeypatch):
    """distill's input hash holds the QAT scheme's version from 2 on (the CNN scheme's 2: each
    BatchNorm folded into its conv, activations per tensor; 3: activations never negative in
    calibration kept unsigned; 4: a ReLU6's quantizer kept within 6; 5: BatchNorm statistics
    re-estimated before folding; 6: a conv's output quantized before a Hardswish, SiLU...; 7: and
    before an x * sigmoid(x); 8: a Gemm's bias int32, so ONNX Runtime runs it int8; 9: a conv's
    output quantizer never negative in calibration kept unsigned; 10: a conv's output quantized
    before a hard swish written out; the transformer scheme's 2: a Gemm's bias int32): a run
    QAT-trained by an earlier version (1 hashed without it) trains again, pruned to a latency
    or not; PTQ's distill does not read it."""
    import dataclasses

    from tiny import bert_config

    from kdc.compress import qat

    cfg = yaml.safe_load(cnn_project.read_text())
    qat_cfg = _with(cfg, "quantize.method", "qat")
    pruned = {**qat_cfg, "prune": {"enabled": True, "target_latency_ms": 1.0}}
    configs = {"ptq": cfg, "qat": qat_cfg, "qat pruned to a latency": pruned}
    now = {k: _hashes(c)["distill"] for k, c in configs.items()}
    assert qat.SCHEMES["cnn"].version == 11
    for version in (10, 9, 8, 7, 6, 5, 4, 3, 2, 1):
        earlier = dataclasses.replace(qat.SCHEMES["cnn"], version=version)
        monkeypatch.setitem(qat.SCHEMES, "cnn", earlier)
        before = {k: _hashes(c)["distill"] for k, c in configs.items()}
        assert {k for k in configs if now[k] != before[k]} == {"qat", "qat pruned to a latency"}
    text = {"ptq": bert_config(), "qat": _with(bert_config(), "quantize.method", "qat")}
    text_now = {k: _hashes(c)["distill"] for k, c in text.items()}
    assert qat.SCHEMES["transformer"].version == 2
    earlier = dataclasses.replace(qat.SCHEMES["transformer"], version=1)
    monkeypatch.setitem(qat.SCHEMES, "transformer", earlier)
    assert {k for k, c in text.items() if _hashes(c)["distill"] != text_now[k]} == {"qat"}


def test_a_cnn_distills_again_when_its_batchnorm_re_estimation_changes(cnn_project, monkeypatch):
    """distill's input hash holds `precise_bn.VERSION` for a CNN student (2: BatchNorm statistics
    re-estimated after each epoch): a CNN run distilled before (1, hashed without it) distills
    again, PTQ or QAT; a transformer's run does not read it."""
    from tiny import bert_config

    from kdc.compress import precise_bn

    cfg = yaml.safe_load(cnn_project.read_text())
    configs = {"ptq": cfg, "qat": _with(cfg, "quantize.method", "qat"), "text": bert_config()}
    now = {k: _hashes(c)["distill"] for k, c in configs.items()}
    assert precise_bn.VERSION == 2
    monkeypatch.setattr(precise_bn, "VERSION", 1)
    before = {k: _hashes(c)["distill"] for k, c in configs.items()}
    assert {k for k in configs if now[k] != before[k]} == {"ptq", "qat"}


def test_a_pruned_transformer_distills_again_when_its_pruning_changes(cnn_project, monkeypatch):
    """distill's input hash holds `prune.version` for a pruned transformer student
    (2: its whole classification head left unpruned, ELECTRA's and RoBERTa's dense layer too; 3:
    with the hidden size pruned too, its config.json lists the heads each layer lost, not its
    last ones, which changed no run keeping its hidden size: those hash 2): a run pruned by any
    earlier version (1 hashed without it) distills again; one that does not prune, or a CNN's,
    does not read it."""
    from tiny import bert_config

    from kdc.compress import prune

    text = bert_config()
    pruned = _with(text, "prune.enabled", True)
    hidden = _with(pruned, "prune.hidden_ratio", 0.25)
    cnn = _with(yaml.safe_load(cnn_project.read_text()), "prune.enabled", True)
    configs = {"text": text, "text pruned": pruned, "hidden pruned": hidden, "cnn pruned": cnn}
    now = {k: _hashes(c)["distill"] for k, c in configs.items()}
    assert (prune.TRANSFORMER_VERSION, prune.HIDDEN_KEPT_VERSION) == (3, 2)
    for version, changed in ((2, {"hidden pruned"}), (1, {"hidden pruned", "text pruned"})):
        monkeypatch.setattr(prune, "TRANSFORMER_VERSION", version)
        monkeypatch.setattr(prune, "HIDDEN_KEPT_VERSION", min(version, 2))
        before = {k: _hashes(c)["distill"] for k, c in configs.items()}
        assert {k for k in configs if now[k] != before[k]} == changed, version


def test_ptq_quantizes_again_when_the_nncf_recipe_changes(cnn_project, monkeypatch):
    """build's input hash holds the NNCF PTQ recipe's version for the student's family from 2 on
    (CNNs' 2: every activation per tensor, a depthwise conv's input too; 3: a conv's output
    quantized before a Hardswish, Hardsigmoid...; 4, and transformers' 2: a Gemm's bias int32,
    so ONNX Runtime runs it int8; 5: a conv's output quantized before a hard swish written
    out; 6: and before a GELU): a run whose INT8 graph NNCF may have made (ptq auto
    or nncf, for a CPU or a TensorRT target) by an earlier version, version 1 hashed without it,
    builds again; an FP32-only run, ONNX Runtime's PTQ and a QAT run's build do not read it, nor a
    run of the other family."""
    from tiny import bert_config

    from kdc.compress import nncf_ptq

    text = bert_config()
    text_now = {t: _hashes(text, t)["build"] for t in ("host", "jetson")}
    monkeypatch.setitem(nncf_ptq.RECIPE_VERSIONS, "transformer", 1)
    assert all(_hashes(text, t)["build"] != h for t, h in text_now.items())
    monkeypatch.setitem(nncf_ptq.RECIPE_VERSIONS, "transformer", 2)
    monkeypatch.setitem(nncf_ptq.RECIPE_VERSIONS, "cnn", 1)
    assert {t: _hashes(text, t)["build"] for t in text_now} == text_now
    monkeypatch.undo()
    cfg = yaml.safe_load(cnn_project.read_text())
    configs = {
        "auto": cfg,
        "nncf": _with(cfg, "quantize.ptq", "nncf"),
        "onnxruntime": _with(cfg, "quantize.ptq", "onnxruntime"),
        "fp32": _with(cfg, "quantize.precision", "fp32"),
        "qat": _with(cfg, "quantize.method", "qat"),
    }
    targets = ("host", "jetson")
    now = {(k, t): _hashes(c, t) for k, c in configs.items() for t in targets}
    assert nncf_ptq.RECIPE_VERSIONS == {"cnn": 7, "transformer": 2}
    monkeypatch.setitem(nncf_ptq.RECIPE_VERSIONS, "cnn", 1)
    before = {(k, t): _hashes(c, t) for k, c in configs.items() for t in targets}
    changed = {(*run, s) for run, h in now.items() for s in h if h[s] != before[run][s]}
    assert changed == {(k, t, "build") for k in ("auto", "nncf") for t in targets}


def test_a_report_of_an_earlier_report_version_is_written_again(cnn_project, monkeypatch):
    """The report stage's version is in its hash from 2 on (2: an earlier build's bare ptq: auto
    timings labelled): a resume of a run reported before rewrites its report, and only that."""
    from kdc.stages import report

    cfg = yaml.safe_load(cnn_project.read_text())
    now = _hashes(cfg)
    assert report.VERSION == 3  # 3: a measured p99 of too few runs not judged
    monkeypatch.setattr(report, "VERSION", 2)
    before = _hashes(cfg)
    assert [s for s in now if now[s] != before[s]] == ["report"]


def test_a_head_pruned_teachers_search_runs_again_when_its_head_costs_change(tmp_path, monkeypatch):
    """search's input hash holds `arch_cost.HEAD_COSTS_VERSION` where the teacher's config.json
    lists pruned heads (2: each layer costed by its own heads, its attention narrower than the
    hidden size): such a run searches again; an unpruned teacher's costs did not change, nor
    its hash."""
    import json

    from tiny import bert_config

    from kdc.deploy import arch_cost

    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()
    hashes = {}
    for name, pruned in (("pruned", {"0": [1]}), ("whole", {})):
        conf = {"model_type": "bert", "num_attention_heads": 4, "pruned_heads": pruned}
        (tmp_path / "teacher" / "config.json").write_text(json.dumps(conf))
        hashes[name] = [_hashes(bert_config())["search"]]
        monkeypatch.setattr(arch_cost, "HEAD_COSTS_VERSION", 1)
        hashes[name].append(_hashes(bert_config())["search"])
        monkeypatch.undo()
        monkeypatch.chdir(tmp_path)
    assert hashes["pruned"][0] != hashes["pruned"][1]
    assert hashes["whole"][0] == hashes["whole"][1]
