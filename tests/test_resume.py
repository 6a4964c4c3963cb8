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
