"""Tiny models and learnable data for tests: everything built locally in seconds."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

POS = ["good", "great", "excellent", "love", "fine"]
NEG = ["bad", "awful", "terrible", "hate", "poor"]
FILLER = [
    "the",
    "a",
    "movie",
    "was",
    "it",
    "and",
    "plot",
    "actor",
    "film",
    "really",
    "quite",
    "story",
    "i",
    "this",
    "that",
    "very",
]
ARCH_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "num_labels",
)


def _override(cfg: dict, over: dict) -> dict:
    """`cfg` with the sections of `over` merged in (a dict) or replaced (anything else)."""
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def hf_stub(path: Path, conf: dict) -> Path:
    """A Hugging Face text model directory with the files `kdc validate` checks are there
    (`conf` as config.json, a vocabulary, an empty weights file): it loads no model."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(conf))
    (path / "vocab.txt").write_text("[UNK]\n")
    (path / "model.safetensors").write_bytes(b"")
    return path


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cnn_config(weights: str | None = "teacher.safetensors", **over) -> dict:
    cfg = {
        "name": "tinycnn",
        "task": "image-classification",
        "seed": 0,
        "teacher": {
            "entrypoint": "kdc.models.cnn:small_cnn",
            "kwargs": {"num_classes": 10, "channels": [16, 32]},
            "weights": weights,
        },
        "data": {"source": "sklearn:digits", "limit_train": 600, "limit_eval": 200},
        "student": {"width": 0.5},
        "distill": {"epochs": 4, "batch_size": 64, "lr": 0.003},
        "quantize": {"precision": "int8", "calibration_size": 64},
        "verify": {"warmup": 5, "iterations": 20, "min_duration_s": 0.05, "threads": 1},
        "constraints": {"max_accuracy_drop": 0.5},
    }
    _override(cfg, over)
    if weights is None:
        cfg["teacher"].pop("weights")
    return cfg


def config_of(project: Path) -> dict:
    """A tiny project's model.yaml (`project`) as a dict whose file paths (teacher, data) are
    absolute, for a variant written elsewhere (tmp_path)."""
    cfg = yaml.safe_load(project.read_text())
    for section, key in (
        ("teacher", "path"),
        ("teacher", "weights"),
        ("data", "source"),
        ("data", "eval"),
    ):
        value = cfg.get(section, {}).get(key)
        if value and not str(value).startswith("sklearn:"):
            cfg[section][key] = str(project.parent / value)
    return cfg


def make_cnn_project(root: Path) -> Path:
    from kdc.config import parse_config
    from kdc.data import load_dataset
    from kdc.models import load_teacher

    cfg = parse_config(cnn_config(weights=None), base_dir=root)
    ds = load_dataset(cfg)
    torch.manual_seed(0)
    teacher = load_teacher(cfg)
    _train(
        teacher.module,
        {"pixel_values": torch.from_numpy(ds.train.features)},
        torch.from_numpy(ds.train.labels),
        epochs=15,
        lr=3e-3,
    )
    save_file(
        {k: v.contiguous() for k, v in teacher.module.state_dict().items()},
        str(root / "teacher.safetensors"),
    )
    return write_yaml(root / "model.yaml", cnn_config())


def _train(model: torch.nn.Module, x: dict, y: torch.Tensor, epochs: int, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = np.random.default_rng(0)
    n = len(y)
    model.train()
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(n), max(1, n // 32)):
            loss = torch.nn.functional.cross_entropy(
                model(**{k: v[idx] for k, v in x.items()}), y[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def sentences(n: int, seed: int) -> list[tuple[str, str]]:
    """Learnable sentiment: the label is which keyword set dominates the sentence."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = "positive" if rng.random() < 0.5 else "negative"
        words = list(rng.choice(FILLER, size=rng.integers(4, 9)))
        for _ in range(rng.integers(1, 3)):
            words.insert(
                rng.integers(0, len(words) + 1), rng.choice(POS if label == "positive" else NEG)
            )
        rows.append((" ".join(words), label))
    return rows


def bert_config(**over) -> dict:
    cfg = {
        "name": "tinybert",
        "task": "text-classification",
        "seed": 0,
        "teacher": {"path": "teacher"},
        "data": {"source": "train.csv", "eval": "test.csv", "max_length": 16},
        "student": {"layers": 2},
        "distill": {"epochs": 3, "batch_size": 32, "lr": 0.001},
        "quantize": {"precision": "int8", "calibration_size": 64},
        "verify": {"warmup": 5, "iterations": 20, "min_duration_s": 0.05, "threads": 1},
        "constraints": {"max_accuracy_drop": 0.5},
    }
    return _override(cfg, over)


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    """root/imgs/<class>/<i>.png: `classes` maps a class to its number of 8×8 RGB images, each
    of one colour: red 40 × i, green 60 × the class's place in `classes` (classes hold no
    image of another's), blue 100."""
    from PIL import Image

    for k, (cls, n) in enumerate(classes.items()):
        (root / "imgs" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i, 60 * k, 100)).save(root / "imgs" / cls / f"{i}.png")
    return root / "imgs"


def tiny_bert(tmp: Path, num_labels: int = 2, layers: int = 4, encoder: bool = False):
    """An untrained tiny BERT classifier (`encoder`: a BertModel without head) and its tokenizer,
    a word-level vocabulary over the test words."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POS, *NEG, *FILLER]
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    return (BertModel if encoder else BertForSequenceClassification)(config), tok


def tiny_text_adapter(tmp: Path, layers: int = 2, **config):
    """`tiny_bert` as kdc's HFTextAdapter (max_length 16), with `config` attributes set in order."""
    from kdc.models.hf import HFTextAdapter

    model, tok = tiny_bert(tmp, layers=layers)
    for k, v in config.items():
        setattr(model.config, k, v)
    return HFTextAdapter(model.eval(), tok, max_length=16)


def run_onnx(path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of an ONNX file on the CPU provider."""
    from kdc.deploy.onnxruntime import make_session, run_session

    return run_session(make_session(path), inputs)


def optimized_ops(path: Path, out: Path) -> list[str]:
    """The op types of ONNX Runtime's ORT_ENABLE_ALL graph of `path` on the CPU provider (as the
    INT8 engine runs on a CPU; saved to `out`): QLinearConv where it fused a Q/DQ conv."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(out)).graph.node]


def make_bert_project(root: Path) -> Path:
    write_csv(root / "train.csv", sentences(400, 1))
    write_csv(root / "test.csv", sentences(120, 2))
    model, tok = tiny_bert(root)
    rows = sentences(400, 1)
    enc = tok(
        [r[0] for r in rows],
        padding="max_length",
        truncation=True,
        max_length=16,
        return_tensors="pt",
    )
    y = torch.tensor([1 if r[1] == "positive" else 0 for r in rows])

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    _train(
        Wrap(model),
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
        y,
        epochs=8,
        lr=2e-3,
    )
    model.save_pretrained(str(root / "teacher"))
    tok.save_pretrained(str(root / "teacher"))
    return write_yaml(root / "model.yaml", bert_config())


def sentence_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """Learnable text pairs: (premise, hypothesis, label), the label the hypothesis's sentiment
    (the premise's own keywords are a distraction, so the model must tell the texts apart)."""
    rng = np.random.default_rng(seed)
    a, b = sentences(n, int(rng.integers(1 << 30))), sentences(n, int(rng.integers(1 << 30)))
    return [(x[0], y[0], y[1]) for x, y in zip(a, b, strict=True)]


def make_pair_project(root: Path) -> Path:
    """A text-pair project (train.csv/test.csv with premise, hypothesis, label) with a tiny BERT
    teacher trained on pairs (token type ids told apart): returns the model.yaml path."""
    for name, n, seed in (("train.csv", 400, 1), ("test.csv", 120, 2)):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["premise", "hypothesis", "label"])
            w.writerows(sentence_pairs(n, seed))
    model, tok = tiny_bert(root)
    rows = sentence_pairs(400, 1)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    enc = tok([r[0] for r in rows], [r[1] for r in rows], padding="max_length", max_length=24)
    x = {k: torch.tensor(enc[k]) for k in keys}
    y = torch.tensor([1 if r[2] == "positive" else 0 for r in rows])

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            return self.m(**kw).logits

    _train(Wrap(model), x, y, epochs=10, lr=2e-3)
    model.save_pretrained(str(root / "teacher"))
    tok.save_pretrained(str(root / "teacher"))
    data = {"text_column": ["premise", "hypothesis"], "max_length": 24}
    return write_yaml(root / "model.yaml", bert_config(data=data))


def exported_bert(path: Path, seq: int, **config) -> tuple[Path, dict]:
    """A random BertForSequenceClassification (BertConfig `config`) exported to `path` by the
    TorchScript exporter (opset 17, dynamic batch and sequence), and its architecture dict."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(max_position_embeddings=64, **config)
    net = BertForSequenceClassification(cfg).eval()
    ids = torch.ones(1, seq, dtype=torch.long)
    with warnings.catch_warnings():  # the tracer's warnings about HF's mask code
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (ids, ids),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={
                "input_ids": {0: "b", 1: "s"},
                "attention_mask": {0: "b", 1: "s"},
                "logits": {0: "b"},
            },
        )
    arch = {
        "family": "transformer",
        "model_type": "bert",
        "max_length": seq,
        **{k: getattr(cfg, k) for k in ARCH_KEYS},
    }
    return path, arch


def vit_config(**over) -> dict:
    cfg = {
        "name": "tinyvit",
        "task": "image-classification",
        "seed": 0,
        "teacher": {"path": "teacher"},
        "data": {"source": "sklearn:digits", "limit_train": 600, "limit_eval": 200},
        "student": {"layers": 2},
        "distill": {"epochs": 8, "batch_size": 64, "lr": 0.003},
        "quantize": {"precision": "int8", "calibration_size": 64},
        "verify": {"warmup": 5, "iterations": 20, "min_duration_s": 0.05, "threads": 1},
        "constraints": {"max_accuracy_drop": 0.5},
    }
    return _override(cfg, over)


# tiny vision transformers by kind: (config, model) class names in transformers
VIT_KINDS = {
    "vit": ("ViTConfig", "ViTForImageClassification"),
    "deit": ("DeiTConfig", "DeiTForImageClassification"),
    "deit-teacher": ("DeiTConfig", "DeiTForImageClassificationWithTeacher"),
}


def tiny_vit(
    labels: list[str],
    *,
    channels: int,
    hidden: int,
    layers: int,
    heads: int,
    image_size: int = 8,
    kind: str = "vit",
) -> torch.nn.Module:
    """An untrained image classifier of `kind` (VIT_KINDS) with 2×2 patches and an FFN twice
    `hidden`."""
    import transformers

    config_class, model_class = (getattr(transformers, n) for n in VIT_KINDS[kind])
    model = model_class(
        config_class(
            image_size=image_size,
            patch_size=2,
            num_channels=channels,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
        )
    )
    # transformers zeroes DeiT's special tokens and position embeddings; draw them as for ViT
    # (and timm's DeiT), or the two tokens start equal and a tiny teacher learns less
    with torch.no_grad():
        for p in model.base_model.embeddings.parameters(recurse=False):
            if not p.any():
                torch.nn.init.trunc_normal_(p, std=model.config.initializer_range)
    return model


def tiny_beit(hidden: int = 32, heads: int = 2, labels: int = 3, relative: bool = False):
    """An untrained one-channel 8x8 BEiT classifier (2 layers, patch 2, mean pooling): absolute
    position embeddings, or with `relative` relative position biases and no position table."""
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        num_labels=labels,
        use_relative_position_bias=relative,
        use_absolute_position_embeddings=not relative,
    )
    torch.manual_seed(0)
    return BeitForImageClassification(config).eval()


def make_vit_project(root: Path, kind: str = "vit") -> Path:
    """A 4-layer ViT (8×8 one-channel digits, 2×2 patches; `kind` as for tiny_vit) trained on
    digits' training rows (600 of them made a teacher of 0.65 to 0.9 by the rows drawn), saved
    as a Hugging Face directory with its image processor config."""
    from kdc.config import parse_config
    from kdc.data import load_dataset
    from kdc.models.hf_image import PixelLogits

    torch.manual_seed(0)
    model = tiny_vit(
        [str(i) for i in range(10)], channels=1, hidden=64, layers=4, heads=4, kind=kind
    )
    cfg = vit_config()
    cfg["data"]["limit_train"] = None  # every training row: DeiT 0.895 to 0.935 (seeds 0 to 2)
    ds = load_dataset(parse_config(cfg, base_dir=root))
    x = (torch.from_numpy(ds.train.features) - 0.5) / 0.5

    _train(PixelLogits(model), {"pixel_values": x}, torch.from_numpy(ds.train.labels), 20, 3e-3)
    model.save_pretrained(str(root / "teacher"))
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 8, "width": 8},
        "image_mean": [0.5],
        "image_std": [0.5],
    }
    (root / "teacher" / "preprocessor_config.json").write_text(json.dumps(processor))
    return write_yaml(root / "model.yaml", vit_config())


def floors(path) -> int:
    """How many masked-softmax floors (kdc.deploy.softmax_floor) the ONNX file at `path` has."""
    import onnx

    from kdc.deploy.softmax_floor import PREFIX

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(n.name.startswith(PREFIX) and n.op_type == "Max" for n in graph.node)
