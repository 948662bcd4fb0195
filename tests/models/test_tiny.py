"""Tiny offline models: the real save_pretrained / from_pretrained path, no [UNK] on their corpus."""

from __future__ import annotations

import pytest
import torch

from densekit.models.tiny import build_tiny_model

TEXTS = [
    "dense retrieval with small encoders",
    "knowledge distillation from a cross encoder teacher",
    "hard negatives mined from a faiss index",
    "the quick brown fox jumps over the lazy dog",
] * 5


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_tiny_model_round_trip(tmp_path, arch):
    from transformers import AutoModel, AutoTokenizer

    out = build_tiny_model(tmp_path / arch, TEXTS, arch=arch, layers=2, hidden=16, heads=2, intermediate=32, seed=3)
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModel.from_pretrained(str(out)).eval()
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    assert tok.unk_token_id not in enc["input_ids"].tolist()[0]
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    assert h.shape[0] == 2 and h.shape[-1] == 16
    # Same seed, same weights: a second build is identical.
    out2 = build_tiny_model(tmp_path / (arch + "2"), TEXTS, arch=arch, layers=2, hidden=16, heads=2, intermediate=32, seed=3)
    m2 = AutoModel.from_pretrained(str(out2)).eval()
    with torch.no_grad():
        torch.testing.assert_close(m2(**enc).last_hidden_state, h)


def test_shared_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    a = build_tiny_model(tmp_path / "a", TEXTS, layers=4)
    b = build_tiny_model(tmp_path / "b", [], layers=1, tokenizer_from=a)
    assert AutoTokenizer.from_pretrained(str(a)).get_vocab() == AutoTokenizer.from_pretrained(str(b)).get_vocab()
