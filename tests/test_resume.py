"""Resume skips finished stages whose inputs did not change, and redoes changed ones."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from tiny import write_yaml

from kdc import api, pipeline
from kdc.config import load_config
from kdc.errors import UserError
from kdc.rundir import RunDir


def _cfg(cnn_project, tmp_path, weights: Path | None = None, **distill):
    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(weights or cnn_project.parent / "teacher.safetensors")
    cfg["distill"].update({"epochs": 1, **distill})
    return write_yaml(tmp_path / "model.yaml", cfg)


def test_resume_skips_done_stages(cnn_project, tmp_path):
    path = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    manifest = json.loads((run / "manifest.json").read_text())
    first = manifest["stages"]

    # the manifest records the profile and versions report.json has; report.json shows every
    # stage, its own included, as done (it is written last, before the manifest says so)
    report = json.loads((run / "report.json").read_text())
    assert manifest["profile"] == {"name": "host", "sha256": report["target"]["profile_sha256"]}
    assert manifest["libraries"] == report["run"]["libraries"]
    assert manifest["kdc_version"] == report["kdc_version"]
    assert {k: v["status"] for k, v in report["run"]["stages"].items()} == dict.fromkeys(
        first, "done"
    )
    # a finished stage keeps its start time; the run started when its first stage did
    assert all(v["started"] <= v["finished"] for v in first.values())
    assert report["run"]["started"] == first["search"]["started"]

    # a manifest written before those keys existed still resumes, and gains them
    for key in ("profile", "libraries"):
        del manifest[key]
    (run / "manifest.json").write_text(json.dumps(manifest))
    api.compress(path, "host", run, resume=True, quiet=True)
    manifest = json.loads((run / "manifest.json").read_text())
    second = manifest["stages"]
    assert all(first[s]["finished"] == second[s]["finished"] for s in first)
    assert manifest["profile"]["sha256"] == report["target"]["profile_sha256"]
    assert manifest["libraries"] == report["run"]["libraries"]

    # a distill change re-runs distill and everything after it, not search
    path = _cfg(cnn_project, tmp_path, lr=0.001)
    api.compress(path, "host", run, resume=True, quiet=True)
    third = json.loads((run / "manifest.json").read_text())["stages"]
    assert third["search"]["finished"] == first["search"]["finished"]
    assert third["distill"]["input_hash"] != first["distill"]["input_hash"]

    # the teacher cache's size changes speed and memory, not the student: no computing stage is
    # redone (the report is rewritten with the config's hash: the test below)
    path = _cfg(cnn_project, tmp_path, lr=0.001, teacher_cache_mb=0)
    api.compress(path, "host", run, resume=True, quiet=True)
    fourth = json.loads((run / "manifest.json").read_text())["stages"]
    redone = [s for s in third if fourth[s]["finished"] != third[s]["finished"]]
    assert redone in ([], ["report"])  # within the same second the report's time is the same


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
    """distill's input hash holds `prune.TRANSFORMER_VERSION` for a pruned transformer student
    (2: its whole classification head left unpruned, ELECTRA's and RoBERTa's dense layer too; 3:
    its config.json states the heads each layer lost, `pruned_heads`, which a config.json an
    earlier version wrote lacks): a run pruned by any earlier version (1 hashed without it)
    distills again; one that does not prune, or a CNN's, does not read it."""
    from tiny import bert_config

    from kdc.compress import prune

    text = bert_config()
    pruned = _with(text, "prune.enabled", True)
    cnn = _with(yaml.safe_load(cnn_project.read_text()), "prune.enabled", True)
    configs = {"text": text, "text pruned": pruned, "cnn pruned": cnn}
    now = {k: _hashes(c)["distill"] for k, c in configs.items()}
    assert prune.TRANSFORMER_VERSION == 3
    for version in (2, 1):
        monkeypatch.setattr(prune, "TRANSFORMER_VERSION", version)
        before = {k: _hashes(c)["distill"] for k, c in configs.items()}
        assert {k for k in configs if now[k] != before[k]} == {"text pruned"}


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
    assert report.VERSION == 2
    monkeypatch.setattr(report, "VERSION", 1)
    before = _hashes(cfg)
    assert [s for s in now if now[s] != before[s]] == ["report"]


def test_resume_after_an_edit_redoes_only_the_stages_reading_it(cnn_project, tmp_path, capsys):
    """Changing the accuracy bound or the calibration rows re-runs neither search nor distill;
    changing the latency budget re-runs search."""
    path = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    first = json.loads((run / "manifest.json").read_text())["stages"]
    cfg = yaml.safe_load(path.read_text())
    cfg["constraints"]["max_accuracy_drop"] = 0.3
    cfg["quantize"]["calibration_size"] = 32
    write_yaml(path, cfg)
    plan = api.plan(path, "host", run, resume=True)["resume"]  # --dry-run --resume says so first
    skipped = {"search", "distill", "export"}
    assert {k for k, v in plan.items() if v == "up to date, skipped"} == skipped, plan
    assert plan["build"] == "runs" and "unless build makes the same" in plan["verify"], plan
    capsys.readouterr()
    api.compress(path, "host", run, resume=True)
    out = capsys.readouterr().out
    assert "search: up to date, skipped" in out and "distill: up to date, skipped" in out, out
    second = json.loads((run / "manifest.json").read_text())["stages"]
    for stage in ("search", "distill", "export"):
        assert second[stage]["finished"] == first[stage]["finished"], stage
    assert (
        second["build"]["metrics"] and second["build"]["input_hash"] != first["build"]["input_hash"]
    )

    cfg["constraints"]["latency_budget_ms"] = 50.0
    write_yaml(path, cfg)
    assert api.plan(path, "host", run, resume=True)["resume"]["search"] == "runs"
    assert "resume" not in api.plan(path, "host", run)  # a run without --resume redoes them all
    api.compress(path, "host", run, resume=True, quiet=True)
    third = json.loads((run / "manifest.json").read_text())["stages"]
    assert third["search"]["input_hash"] != second["search"]["input_hash"]


def test_a_resume_changing_an_unhashed_field_rewrites_the_report_alone(cnn_project, tmp_path):
    """distill.teacher_cache_mb changes no stage's result, so none that computes one runs again;
    the report does, carrying the hash of the config this resume used, as the manifest does."""
    path = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    first = json.loads((run / "manifest.json").read_text())
    cfg = yaml.safe_load(path.read_text())
    cfg["distill"]["teacher_cache_mb"] = 0
    write_yaml(path, cfg)
    api.compress(path, "host", run, resume=True, quiet=True)
    second = json.loads((run / "manifest.json").read_text())
    for stage in ("search", "distill", "export", "build", "verify"):
        assert second["stages"][stage]["finished"] == first["stages"][stage]["finished"], stage
    assert second["stages"]["report"]["input_hash"] != first["stages"]["report"]["input_hash"]
    now = load_config(path).sha256()
    assert now != first["config_sha256"] and second["config_sha256"] == now
    report_run = json.loads((run / "report.json").read_text())["run"]
    assert report_run["config_sha256"] == now
    # run.wall_s sums every stage's last run; the command's own time covers the report alone
    assert report_run["wall_s_is"].startswith("sum of the stages' wall_s")
    assert report_run["invocation"]["stages_run"] == ["report"]
    assert f"config sha256 {now[:12]}" in (run / "report.md").read_text()
    assert not pipeline.outdated(RunDir(run))


def test_corrupt_artifact_is_redone(cnn_project, tmp_path):
    path = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    before = json.loads((run / "manifest.json").read_text())["stages"]
    (run / "export" / "model.onnx").write_bytes(b"garbage")
    api.compress(path, "host", run, resume=True, quiet=True)
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert after["distill"]["finished"] == before["distill"]["finished"]
    assert after["export"]["finished"] != before["export"]["finished"]


def test_retrained_teacher_gets_fresh_cached_logits(cnn_project, tmp_path):
    """The teacher-logits cache is keyed by the teacher's files: a retrained teacher (same
    shapes, new weights) re-runs distill with new logits, never the cached ones."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "teacher.safetensors"  # a copy: the session's teacher stays as trained
    shutil.copyfile(cnn_project.parent / "teacher.safetensors", weights)
    path = _cfg(cnn_project, tmp_path, weights)
    run = tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    first = sorted((run / "distill").glob("teacher_logits*.npy"))
    state = load_file(weights)
    save_file(
        {
            k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
            for k, v in state.items()
        },
        weights,
    )
    api.compress(path, "host", run, resume=True, quiet=True)
    second = sorted((run / "distill").glob("teacher_logits*.npy"))
    assert len(first) == len(second) == 1 and first != second


def test_the_inputs_fingerprint_follows_the_data(tmp_path):
    """What every stage's input hash holds of the data (so --resume redoes edited data): a file
    by its sha256, a folder (image folder, saved `datasets`) by its files' names and sizes,
    hidden files left out and linked folders followed; a fresh copy of the same folder (new
    modification times, as a CI checkout makes) is the same data."""
    from tiny import cnn_config

    from kdc.config import parse_config
    from kdc.fingerprint import inputs_fingerprint

    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "1.png").write_bytes(b"png")
    raw = cnn_config(weights=None)
    raw["data"] = {"source": "train.csv", "eval": "images"}
    cfg = parse_config(raw, base_dir=tmp_path)
    first = inputs_fingerprint(cfg)
    assert inputs_fingerprint(cfg) == first
    (tmp_path / "train.csv").write_text("text,label\na,y\nb,x\n")  # labels flipped, same size
    second = inputs_fingerprint(cfg)
    assert second != first
    (tmp_path / "images" / "cat" / "2.png").write_bytes(b"png")
    third = inputs_fingerprint(cfg)
    assert third != second
    (tmp_path / "images" / ".DS_Store").write_bytes(b"x")  # hidden: the readers skip it
    assert inputs_fingerprint(cfg) == third
    (tmp_path / "dogs").mkdir()  # a class folder linked in: followed, as the reader does
    (tmp_path / "images" / "dog").symlink_to(tmp_path / "dogs", target_is_directory=True)
    (tmp_path / "dogs" / "1.png").write_bytes(b"png")
    fourth = inputs_fingerprint(cfg)
    assert fourth != third
    (tmp_path / "dogs" / "1.png").write_bytes(b"png, edited")
    fifth = inputs_fingerprint(cfg)
    assert fifth != fourth
    os.utime(tmp_path / "images" / "cat" / "1.png", (1, 1))  # touched, as a checkout does
    assert inputs_fingerprint(cfg) == fifth


def test_bad_data_on_resume_leaves_the_finished_run_as_it_was(cnn_project, tmp_path, monkeypatch):
    """Data a stage would refuse (a label column, an eval label) is refused before any stage
    starts: the finished run keeps its report and its stages stay done."""
    import pytest

    from kdc.errors import UserError
    from kdc.pipeline import Context

    run = tmp_path / "run"
    api.compress(_cfg(cnn_project, tmp_path), "host", run, quiet=True)
    before = json.loads((run / "manifest.json").read_text())["stages"]
    report = (run / "report.json").read_bytes()

    def refused(ctx):
        raise UserError("eval labels not seen in training: ['mixed']", field="data.eval")

    monkeypatch.setattr(Context, "dataset", property(refused))
    path = _cfg(cnn_project, tmp_path, lr=0.001)  # distill and what follows would run again
    with pytest.raises(UserError, match="eval labels not seen in training"):
        api.compress(path, "host", run, resume=True, quiet=True)
    assert (run / "report.json").read_bytes() == report
    assert json.loads((run / "manifest.json").read_text())["stages"] == before


def test_a_run_for_a_profile_yaml_is_verified_for_it_again(cnn_project, tmp_path):
    """`kdc verify RUN` takes the run's target from its manifest: a profile YAML's name alone
    is not a target kdc knows, so the manifest keeps the file."""
    from kdc.profiles import profiles_dir

    doc = yaml.safe_load((profiles_dir() / "jetson-orin-nano-8gb.yaml").read_text())
    doc.update(name="my-orin", aliases=[])
    profile = write_yaml(tmp_path / "my-orin.yaml", doc)
    run = tmp_path / "run"
    api.compress(_cfg(cnn_project, tmp_path), str(profile), run, quiet=True)
    assert json.loads((run / "manifest.json").read_text())["target_file"] == str(profile)
    report = api.verify(run, quiet=True)
    assert report["target"]["name"] == "my-orin"
    profile.rename(tmp_path / "moved.yaml")  # another runner: the bundle's copy stands in
    assert api.verify(run, quiet=True)["target"]["name"] == "my-orin"
    (run / "build" / "bundle" / "profile.yaml").unlink()
    with pytest.raises(UserError, match=f"for the profile YAML {profile}, which is gone"):
        api.verify(run, quiet=True)


def test_resume_for_another_target_keeps_the_same_students_distillation(cnn_project, tmp_path):
    """Another target whose search chooses the same student, at the same channel multiple, keeps
    the distilled student and its export (the costly stages): only what reads the rest of the
    target runs again. A target of another channel multiple distills again."""
    from kdc.tools import inspect_run

    path = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    api.compress(path, "jetson-orin-nano-8gb", run, quiet=True)
    first = json.loads((run / "manifest.json").read_text())["stages"]
    api.compress(path, "jetson-orin-nx-16gb", run, resume=True, quiet=True)  # divisor 16 too
    second = json.loads((run / "manifest.json").read_text())["stages"]
    assert {s for s in first if first[s]["finished"] == second[s]["finished"]} == {
        "distill",
        "export",
    }
    assert inspect_run(run)["outdated"] == []  # confirmed for the new search's outputs
    report = json.loads((run / "report.json").read_text())
    assert report["target"]["name"] == "jetson-orin-nx-16gb"
    api.compress(path, "nvidia-t4", run, resume=True, quiet=True)  # divisor 32
    third = json.loads((run / "manifest.json").read_text())["stages"]
    # distilled again; deterministic training may give the same weights, whose graph is kept
    assert [s for s in third if third[s]["finished"] == second[s]["finished"]] in ([], ["export"])
    assert inspect_run(run)["outdated"] == []


def test_the_distill_hash_reads_only_the_target_facets_distillation_uses():
    """Targets of one channel multiple share distill's input hash, unless QAT (TensorRT or not
    decides its fake-quantizers) or pruning to a latency (the whole latency model) reads more."""
    from tiny import cnn_config

    from kdc.config import parse_config
    from kdc.pipeline import _stages, stage_hash
    from kdc.profiles import load_profile

    nano, nx = load_profile("jetson-orin-nano-8gb"), load_profile("jetson-orin-nx-16gb")
    host = load_profile("host")
    cpu16 = host.model_copy(
        update={"defaults": host.defaults.model_copy(update={"channel_divisor": 16})}
    )
    distill = next(s for s in _stages() if s.name == "distill")

    def h(profile, **over):
        cfg = parse_config({**cnn_config(), **over}, base_dir=".")
        return stage_hash(distill, cfg, profile, "up", "in")

    assert h(nano) == h(nx) == h(cpu16) != h(host)  # host's channel multiple differs
    qat = {"quantize": {"method": "qat"}}
    assert h(nano, **qat) == h(nx, **qat) != h(cpu16, **qat)  # TensorRT or not
    pruned = {"prune": {"enabled": True, "target_latency_ms": 1.0}}
    assert h(nano, **pruned) != h(nx, **pruned)
    # a Hugging Face teacher's student is never narrowed by the multiple (a ViT re-distilled on
    # a --resume from host to a Jetson, same weights); pruning without round_to reads it
    vit = {"task": "image-classification", "teacher": {"path": "vit"}}
    assert h(host, **vit) == h(nano, **vit)
    assert h(host, **vit, prune={"enabled": True}) != h(nano, **vit, prune={"enabled": True})


def test_a_run_recorded_with_the_whole_search_outputs_as_upstream_is_not_outdated(
    cnn_project, tmp_path
):
    """Runs recorded before distill hashed the chosen spec alone kept the hash of all of search's
    outputs: still current while search's outputs are those; outdated once they change."""
    from kdc.pipeline import outdated, upstream_hash
    from kdc.rundir import RunDir

    run = tmp_path / "run"
    api.compress(_cfg(cnn_project, tmp_path), "host", run, quiet=True)
    rd = RunDir.existing(run)
    m = json.loads((run / "manifest.json").read_text())
    del m["stages"]["distill"]["upstream_outputs"]
    m["stages"]["distill"]["upstream"] = rd.output_hash("search")
    (run / "manifest.json").write_text(json.dumps(m))
    assert outdated(rd) == []
    m["stages"]["distill"]["upstream"] = upstream_hash(rd, "distill")  # the spec alone, as
    assert outdated(rd) == []  # runs recorded by the first version of the narrower hash
    m["stages"]["distill"]["upstream"] = "an earlier search's"
    (run / "manifest.json").write_text(json.dumps(m))
    assert outdated(rd) == ["distill", "export", "build", "verify", "report"]


def test_stages_after_a_search_run_alone_are_outdated_until_a_resume_confirms_them(
    cnn_project, tmp_path
):
    """A search run again alone (here: its candidates rewritten, as another target's predictions
    rewrite them) leaves distill and what follows built from its older outputs, even when the
    student it chose is the same: `kdc inspect` flags them and `kdc verify` refuses. A resume
    that finds distill up to date for the new outputs confirms it, and them."""
    from kdc.rundir import RunDir
    from kdc.tools import inspect_run

    path = _cfg(cnn_project, tmp_path)
    run = tmp_path / "run"
    target = "jetson-orin-nano-8gb"
    api.compress(path, target, run, quiet=True)
    cands = run / "search" / "candidates.jsonl"
    cands.write_text(cands.read_text().replace('"chosen": true', '"chosen": true, "note": 1'))
    RunDir.existing(run).rerecord("search", run / "search")
    assert inspect_run(run)["outdated"] == ["distill", "export", "build", "verify", "report"]
    with pytest.raises(UserError, match="built from earlier outputs of 'search'") as e:
        api.verify(run, quiet=True)
    assert f"kdc compress CONFIG --target {target} --out" in e.value.fix  # not host's default
    before = json.loads((run / "manifest.json").read_text())["stages"]
    api.compress(path, target, run, resume=True, quiet=True)
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(after[s]["finished"] == before[s]["finished"] for s in before)  # nothing re-ran
    assert inspect_run(run)["outdated"] == []
    api.verify(run, quiet=True)


def test_the_inputs_fingerprint_follows_the_teacher_files_kdc_reads(tmp_path):
    """A sentence-transformers teacher's pooling is in 1_Pooling/config.json (modules.json names
    the folder): a --resume after it changed (mean to CLS) reused every stage; a SentencePiece
    vocabulary (.model) and remote modelling code (.py) are read too. A README is not."""
    from kdc.config import parse_config
    from kdc.fingerprint import inputs_fingerprint

    teacher = tmp_path / "teacher"
    (teacher / "1_Pooling").mkdir(parents=True)
    (teacher / "config.json").write_text('{"model_type": "bert"}')
    modules = [{"path": ""}, {"path": "1_Pooling"}, {"path": "2_Normalize"}]
    (teacher / "modules.json").write_text(json.dumps(modules))
    (teacher / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (tmp_path / "train.csv").write_text("text\na\nb\n")
    raw = {
        "name": "emb",
        "task": "sentence-embedding",
        "teacher": {"path": "teacher"},
        "data": {"source": "train.csv", "text_column": "text"},
    }
    cfg = parse_config(raw, base_dir=tmp_path)
    seen = {inputs_fingerprint(cfg)}
    (teacher / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    seen.add(inputs_fingerprint(cfg))
    assert len(seen) == 2
    for name in ("spiece.model", "modeling_custom.py"):
        (teacher / name).write_text("v1")
        seen.add(inputs_fingerprint(cfg))
        (teacher / name).write_text("v2")
        seen.add(inputs_fingerprint(cfg))
    assert len(seen) == 6
    (teacher / "README.md").write_text("notes")
    (teacher / "onnx").mkdir()  # a folder modules.json does not name
    (teacher / "onnx" / "config.json").write_text("{}")
    assert inputs_fingerprint(cfg) in seen
