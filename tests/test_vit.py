"""Hugging Face vision transformers (ViTForImageClassification directories): inputs normalised
as the image processor does, students of teacher layers and slices that save and reload, and
`kdc compress` end to end (search with image-shaped costs, export, ORT fusion as "vit")."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from tiny import run_onnx, tiny_vit, vit_config, write_yaml

from kdc import api
from kdc.compress.prune import prune_once
from kdc.compress.student import derive_student
from kdc.config import PruneConfig, load_config
from kdc.data import load_dataset
from kdc.export.onnx_export import export_onnx
from kdc.image_processor import pixel_scale, vit_defaults
from kdc.models import hf_image, load_student, load_teacher

PRECISIONS = ("fp32", "int8")


def _teacher(vit_project):
    cfg = load_config(vit_project)
    return cfg, load_dataset(cfg), load_teacher(cfg)


def test_encode_resizes_and_normalises_like_the_image_processor(vit_project):
    cfg, ds, teacher = _teacher(vit_project)
    x = ds.eval.features[:4]  # 1×8×8 in [0, 1]
    assert np.allclose(teacher.encode(x)["pixel_values"], (x - 0.5) / 0.5)
    big = torch.nn.functional.interpolate(torch.from_numpy(x), size=(16, 16)).numpy()
    assert teacher.encode(big)["pixel_values"].shape == (4, 1, 8, 8)  # resized to the model's
    wide = np.repeat(x, 3, axis=-1)  # 8×24: stretched to a square, as ViTImageProcessor does
    got = teacher.encode(wide)["pixel_values"]
    assert got.shape == (4, 1, 8, 8) and got.dtype == np.float32


@pytest.mark.parametrize("side", [8, 13])  # the model's size, and another resized to it
def test_encode_in_chunks_gives_the_whole_split_encoded_at_once(monkeypatch, side):
    """Images are resized and normalized ENCODE_IMAGES rows at a time into one array, each
    chunk told to `progress`: byte for byte the whole split resized, then normalized, at once."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    processor = {**vit_defaults(8, 3), "image_mean": mean, "image_std": std}
    model = tiny_vit(["a", "b"], channels=3, hidden=8, layers=1, heads=2)
    x = np.random.default_rng(0).random((10, 3, side, side), dtype=np.float32)
    whole = torch.from_numpy(x)
    if side != 8:
        whole = torch.nn.functional.interpolate(whole, (8, 8), mode="bilinear", antialias=True)
    mean_t, std_t = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
    expected = ((whole * pixel_scale(processor) - mean_t) / std_t).numpy()
    monkeypatch.setattr(hf_image, "ENCODE_IMAGES", 3)
    told = []
    got = hf_image.HFImageAdapter(model, processor).encode(x, progress=told.append)
    assert told == [3, 3, 3, 1]
    assert got["pixel_values"].dtype == np.float32
    assert got["pixel_values"].tobytes() == expected.tobytes()


def test_sliced_student_saves_and_reloads(vit_project, tmp_path):
    """Teacher layers 1 and 3, half the FFN: the patch embedding, [CLS] and position
    embeddings come from the teacher; the reloaded student gives the same logits."""
    cfg, ds, teacher = _teacher(vit_project)
    x = teacher.encode(ds.eval.features[:8])
    spec = {"family": "transformer", "layers": [1, 3], "intermediate_size": 64}
    student = derive_student(teacher, spec, x)
    arch = student.architecture()
    assert (arch["num_hidden_layers"], arch["intermediate_size"], arch["image_size"]) == (2, 64, 8)
    files = student.save(tmp_path / "student")
    assert tmp_path / "student" / "preprocessor_config.json" in files
    again = load_student(tmp_path / "student")
    assert np.allclose(again.forward_numpy(x), student.forward_numpy(x), atol=1e-5)
    assert json.loads((tmp_path / "student" / "preprocessor_config.json").read_text())["size"] == {
        "height": 8,
        "width": 8,
    }


@pytest.mark.slow
def test_vit_compresses_end_to_end(vit_project, tmp_path):
    report = api.compress(vit_project, "host", tmp_path / "run", quiet=True)
    arch = report["student"]["architecture"]
    assert arch["adapter"] == "hf-image" and arch["num_hidden_layers"] == 2
    # the search predicted the graph the engine runs: pixels in, no attention mask
    assert report["search"]["latency_model"]["input_shape"] == {"pixel_values": [1, 1, 8, 8]}
    fp32, int8 = (next(e for e in report["engines"] if e["precision"] == p) for p in PRECISIONS)
    assert fp32["parity"]["max_abs"] < 1e-4
    assert report["teacher"]["accuracy"]["accuracy"] >= 0.85
    # 2 of 4 layers, 8 epochs on 540 digits: 0.585 (0.6 or more on the unstratified split's
    # rows before); chance 0.1
    assert fp32["accuracy"]["accuracy"] >= 0.5
    assert int8["accuracy"]["accuracy"] >= fp32["accuracy"]["accuracy"] - 0.05
    # ONNX Runtime's transformer optimizer ran as "vit": LayerNorms and GELUs fused
    graph = onnx.load(str(tmp_path / "run" / "build" / "onnxruntime" / "model_fp32.onnx"))
    ops = Counter(n.op_type for n in graph.graph.node)
    assert ops["SkipLayerNormalization"] >= 2 and ops["BiasGelu"] == 2
    # and its attention, exported eager with the scores' scale made a Div
    assert ops["Attention"] == 2 and "Softmax" not in ops


@pytest.mark.parametrize(
    "project, arch",
    [
        ("vit_project", "ViTForImageClassification"),
        # does not end in ForImageClassification: kdc init refused it
        ("deit_project", "DeiTForImageClassificationWithTeacher"),
    ],
)
def test_init_sets_up_a_vit_teacher(project, arch, request, tmp_path):
    """No tokenizer is asked of an image model; its labels and layers are read."""
    from typer.testing import CliRunner

    from kdc.cli import app

    teacher, out = request.getfixturevalue(project).parent / "teacher", tmp_path / "m.yaml"
    assert json.loads((teacher / "config.json").read_text())["architectures"] == [arch]
    res = CliRunner().invoke(
        app, ["init", str(teacher), "--data", "sklearn:digits", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    cfg = load_config(out)
    assert (cfg.task, cfg.student.layers) == ("image-classification", 2)
    plan = CliRunner().invoke(app, ["compress", str(out), "--dry-run"])
    assert plan.exit_code == 0, plan.output


def test_pruned_vit_keeps_cls_and_positions_in_step_and_round_trips(vit_project, tmp_path):
    """Heads, FFN neurons and hidden channels pruned: the [CLS] token and position embeddings
    (bare parameters) lose the same hidden channels; ONNX and the reloaded student agree."""
    cfg, ds, teacher = _teacher(vit_project)
    x = teacher.encode(ds.eval.features[:8])
    student = derive_student(teacher, {"family": "transformer", "layers": [1, 3]}, x)
    prune = PruneConfig(enabled=True, ratio=0.5, head_ratio=0.5)
    kept = prune_once(student, x, prune, ratio=0.5, round_to=8).architecture()
    assert (kept["hidden_size"], kept["num_attention_heads"], kept["intermediate_size"]) == (
        64,
        2,
        64,
    )
    prune = prune.model_copy(update={"hidden_ratio": 0.25})
    pruned = prune_once(student, x, prune, ratio=0.5, round_to=8)
    emb = pruned.model.base_model.embeddings
    assert emb.cls_token.shape[-1] == emb.position_embeddings.shape[-1] == 48
    assert pruned.architecture()["hidden_size"] == 48
    ref = pruned.forward_numpy(x)
    assert np.allclose(run_onnx(export_onnx(pruned, x, tmp_path / "m.onnx"), x), ref, atol=1e-4)
    pruned.save(tmp_path / "student")
    assert np.allclose(load_student(tmp_path / "student").forward_numpy(x), ref, atol=1e-5)


def test_vit_quantization_aware_training_ships_its_qdq_graph(vit_project, tmp_path):
    """QAT on a ViT (it was refused: NNCF's copy did not run the tapped layers): distillation's
    fake-quantized copy trains, and build ships its Q/DQ graph as the INT8 engine."""
    cfg = write_yaml(
        vit_project.parent / "qat.yaml",
        vit_config(distill={"epochs": 2}, quantize={"method": "qat", "qat_epochs": 1}),
    )
    report = api.compress(cfg, "host", tmp_path / "run", quiet=True)
    int8 = next(e for e in report["engines"] if e["precision"] == "int8")
    assert int8["quantization"]["method"] == "qat"
    assert "Linear" in int8["quantization"]["scheme"]
    graph = onnx.load(str(tmp_path / "run" / int8["path"]))
    assert "QuantizeLinear" in {n.op_type for n in graph.graph.node}
    assert int8["accuracy"]["accuracy"] >= 0.3  # 2 epochs + 1 of QAT on 540 digits; chance 0.1


def _rgb_vit(root, image_size: int = 8) -> None:
    """An untrained 3-channel tiny ViT for classes a, b in `root`/teacher."""
    torch.manual_seed(0)
    model = tiny_vit(["a", "b"], channels=3, hidden=16, layers=2, heads=2, image_size=image_size)
    model.save_pretrained(str(root / "teacher"))


def test_rgb_images_are_resized_and_channels_must_match(vit_project, tmp_path):
    """12×12 RGB PNGs in an image folder read at the 3-channel model's 8 (as ViTImageProcessor
    reads them without preprocessor_config.json; data.image_size 16 is not used); one-channel
    digits into it (they used to broadcast to three channels and train on) or RGB images into
    the one-channel digits ViT are a UserError naming data.channels."""
    from PIL import Image

    from kdc.errors import UserError

    _rgb_vit(tmp_path)
    for cls, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), colour).save(tmp_path / "imgs" / cls / f"{i}.png")
    over = {"data": {"source": "imgs", "image_size": 16, "eval_fraction": 0.5}}
    cfg = load_config(write_yaml(tmp_path / "m.yaml", vit_config(**over)))
    ds = load_dataset(cfg)
    teacher = load_teacher(cfg)
    assert ds.train.features.shape[1:] == (3, 8, 8)
    assert teacher.encode(ds.train.features)["pixel_values"].shape[1:] == (3, 8, 8)
    digits = load_dataset(load_config(vit_project)).eval.features[:2]
    with pytest.raises(UserError, match="3-channel images .* data are 1-channel") as e:
        teacher.encode(digits)
    assert e.value.field == "data.channels" and "set data.channels: 3" in e.value.fix
    with pytest.raises(UserError, match="1-channel images .* data are 3-channel"):
        _teacher(vit_project)[2].encode(ds.train.features)


@pytest.mark.slow
def test_vit_evolution_search_and_pruning_for_jetson(vit_project, tmp_path):
    """The proxy search (DisWOT's Grad-CAM over tokens without a mask) and structured pruning of
    heads, FFN and hidden channels, through compress for a TensorRT target; --resume reloads
    the pruned student."""
    over = {
        # students up to the teacher's size (the Orin Nano's budget fits it): pruning has room
        "search": {
            "strategy": "evolution",
            "population": 4,
            "cycles": 2,
            "sample_size": 2,
            "latency_fraction": 1.0,
        },
        "prune": {"enabled": True, "ratio": 0.5, "head_ratio": 0.5, "hidden_ratio": 0.25},
        "distill": {"epochs": 4},
    }
    cfg = write_yaml(vit_project.parent / "evo_prune.yaml", vit_config(**over))
    report = api.compress(cfg, "jetson", tmp_path / "run", quiet=True)
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "search" / "candidates.jsonl").open()]
    assert len(rows) >= 4 and all(np.isfinite(r["proxies"]["diswot"]) for r in rows)
    chosen = next(r for r in rows if r["chosen"])["architecture"]
    arch = report["student"]["architecture"]
    assert arch["hidden_size"] < chosen["hidden_size"]
    assert arch["intermediate_size"] < chosen["intermediate_size"]
    trt = next(e for e in report["engines"] if e["engine"] == "tensorrt")
    assert trt["status"] == "bundle" and trt["precision"] == "int8"
    # the bundle carries what the application on the device needs to make pixel_values
    bundle = tmp_path / "run" / "build" / "bundle"
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["preprocessing"] == ["config.json", "input.json", "preprocessor_config.json"]
    assert (bundle / "preprocessing" / "preprocessor_config.json").is_file()
    assert "preprocessing/" in (bundle / "README.md").read_text()
    # and what kdc's reader did before the processor's normalisation (digits: / 16, not / 255)
    contract = json.loads((bundle / "preprocessing" / "input.json").read_text())
    assert contract["input"]["scale"] == "x / 16.0" and contract["input"]["mean"] == [0.5]
    assert contract["preprocessing"]["steps"][-1].startswith("per channel: (x - mean) / std")
    again = api.compress(cfg, "jetson", tmp_path / "run", resume=True, quiet=True)
    assert again["student"]["architecture"] == arch


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[0.5]", "holds no JSON object"),
        ('{"image_mean": "0.5"}', 'image_mean is "0.5"'),
        ('{"image_std": [0.5, 0.5]}', "not a number or 3 numbers"),
    ],
)
def test_a_bad_image_processor_config_is_one_line(tmp_path, content, words):
    """preprocessor_config.json that is not an object, or mean/std that are not one number per
    channel: a UserError naming the file (an AttributeError or ValueError before)."""
    from kdc.errors import UserError
    from kdc.image_processor import PROCESSOR_FILE, read_processor

    (tmp_path / PROCESSOR_FILE).write_text(content)
    with pytest.raises(UserError, match=words) as e:
        read_processor(tmp_path, 224, 3, "vit")
    assert e.value.source == str(tmp_path / PROCESSOR_FILE)
    (tmp_path / PROCESSOR_FILE).write_text('{"image_mean": [0.1, 0.2, 0.3, 0.4], "image_std": 2}')
    got = read_processor(tmp_path, 224, 3, "vit")
    assert (got["image_mean"], got["image_std"]) == ([0.1, 0.2, 0.3], [2.0] * 3)
