"""Train the vit_digits example's teacher, a small Hugging Face ViT (4 layers, 2×2 patches of the
8×8 digits), on the same train split kdc uses, and save it with save_pretrained (and its image
processor config) as ``teacher/`` beside model.yaml. Takes about 2 minutes on a CPU. Seeded: the
same torch thread count (``OMP_NUM_THREADS``), torch version and CPU give the same weights; another
thread count gives other weights (torch's CPU kernels split their sums by thread)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from kdc.config import load_config  # noqa: E402
from kdc.data import load_dataset  # noqa: E402
from kdc.models import load_teacher  # noqa: E402
from kdc.rundir import atomic_dir, write_json  # noqa: E402

# the teacher's image processor: 8x8 images (ViTImageProcessor's default size is 224), mean and
# std 0.5 (kdc's pixels are in [0, 1])
PROCESSOR = {
    "image_processor_type": "ViTImageProcessor",
    "size": {"height": 8, "width": 8},
    "image_mean": [0.5],
    "image_std": [0.5],
}


def untrained(directory: Path, labels: list[str], seed: int) -> None:
    """A randomly initialised ViT for 8×8 one-channel images, saved as a model directory."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    with atomic_dir(directory) as tmp:
        ViTForImageClassification(config).save_pretrained(str(tmp))
        write_json(tmp / "preprocessor_config.json", PROCESSOR)


def train(config: Path, epochs: int, seed: int = 0) -> dict:
    cfg = load_config(config)
    ds = load_dataset(cfg)
    teacher_dir = cfg.resolve(cfg.teacher.path)
    untrained(teacher_dir, [str(i) for i in range(10)], seed)
    teacher = load_teacher(cfg)
    model = teacher.module
    x = torch.from_numpy(teacher.encode(ds.train.features)["pixel_values"])
    y = torch.from_numpy(ds.train.labels)
    steps = epochs * (len(x) // 64 + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(x)), len(x) // 64 + 1):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    ev = torch.from_numpy(teacher.encode(ds.eval.features)["pixel_values"])
    with torch.inference_mode():
        acc = float((model(ev).argmax(-1).numpy() == ds.eval.labels).mean())
    with atomic_dir(teacher_dir) as tmp:
        teacher.model.save_pretrained(str(tmp))
        write_json(tmp / "preprocessor_config.json", PROCESSOR)
    metrics = {"eval_accuracy_pytorch": acc, "epochs": epochs, "params": teacher.params()}
    write_json(teacher_dir / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, default=HERE / "model.yaml")
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()
    print(train(args.config, args.epochs))
