"""Train the digits example's teacher (a small CNN) on the same train split kdc uses, and save
it with safetensors beside model.yaml. Takes a few seconds on a CPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from kdc.config import load_config  # noqa: E402
from kdc.data import load_dataset  # noqa: E402
from kdc.models import load_teacher  # noqa: E402
from kdc.rundir import atomic_path, write_json  # noqa: E402


def train(config: Path, epochs: int, seed: int = 0) -> dict:
    cfg = load_config(config)
    cfg.teacher.weights = None  # build the architecture untrained
    ds = load_dataset(cfg)
    torch.manual_seed(seed)
    teacher = load_teacher(cfg)
    model = teacher.module
    x = torch.from_numpy(ds.train.features)
    y = torch.from_numpy(ds.train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * (len(x) // 64 + 1))
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
    with torch.inference_mode():
        acc = float(
            (model(torch.from_numpy(ds.eval.features)).argmax(-1).numpy() == ds.eval.labels).mean()
        )
    out = cfg.resolve("teacher/model.safetensors")
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    metrics = {"eval_accuracy_pytorch": acc, "epochs": epochs, "params": teacher.params()}
    write_json(out.parent / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, default=HERE / "model.yaml")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    m = train(args.config, args.epochs)
    print(
        f"teacher: {m['params']:,} params, eval accuracy {m['eval_accuracy_pytorch']:.4f} "
        f"(PyTorch, {m['epochs']} epochs)"
    )
