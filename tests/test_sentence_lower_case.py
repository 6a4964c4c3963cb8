"""A sentence-transformers model whose sentence_bert_config.json says `do_lower_case: true` has
its texts lower-cased before tokenizing (sentence-transformers' Transformer module does that, not
the tokenizer): kdc tokenized them as they were, so a case-sensitive tokenizer made unknown
tokens of capitalised words the model never saw."""

from __future__ import annotations

import json

import numpy as np
from tiny import tiny_bert

from kdc.models import load_student
from kdc.models.sentence import SentenceAdapter


def _cased_encoder_dir(root, lower: bool):
    """A tiny BertModel with a case-sensitive tokenizer over lower-case words, saved as a
    sentence-transformers directory whose Transformer module lower-cases when `lower`."""
    from transformers import BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    model, _ = tiny_bert(root, encoder=True)
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=False)
    model.save_pretrained(str(root))
    tok.save_pretrained(str(root))
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling")])
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (root / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 16, "do_lower_case": lower})
    )
    return root


def test_do_lower_case_lowers_the_texts_before_tokenizing(tmp_path):
    adapter = SentenceAdapter.from_dir(_cased_encoder_dir(tmp_path / "m", True), max_length=16)
    unk = adapter.tokenizer.unk_token_id
    assert unk in adapter.tokenizer("GOOD Film")["input_ids"]  # the tokenizer keeps the case
    cased, lower = adapter.encode(["GOOD Film"]), adapter.encode(["good film"])
    assert all(np.array_equal(cased[k], lower[k]) for k in lower)
    assert unk not in cased["input_ids"]

    adapter.save(tmp_path / "student")  # a student keeps lower-casing when it loads back
    again = load_student(tmp_path / "student", max_length=16)
    assert np.array_equal(again.encode(["GOOD Film"])["input_ids"], lower["input_ids"])


def test_without_do_lower_case_the_texts_are_tokenized_as_they_are(tmp_path):
    adapter = SentenceAdapter.from_dir(_cased_encoder_dir(tmp_path / "m", False), max_length=16)
    assert adapter.tokenizer.unk_token_id in adapter.encode(["GOOD Film"])["input_ids"]


def test_the_engines_input_contract_lowers_the_texts_too(tmp_path):
    from kdc.deploy.input_contract import text_input_contract

    adapter = SentenceAdapter.from_dir(_cased_encoder_dir(tmp_path / "m", True), max_length=16)
    texts = ["GOOD Film", "an AWFUL plot"]
    ours = adapter.encode(texts)
    inputs = {k: ([1, *v.shape[1:]], str(v.dtype)) for k, v in ours.items()}
    c = text_input_contract(inputs, 16, [], "embedding", lower_case=adapter.lower_case)
    theirs = eval(c["tokenizer"]["call"], {"tokenizer": adapter.tokenizer, "texts": texts})  # noqa: S307
    for name in ours:
        np.testing.assert_array_equal(theirs[name], ours[name])
