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


def _texts(seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(300)] + ["alpha", "beta", "gamma", "delta", "alphabet"]
    return [" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)]


def test_tokenizer_is_the_same_on_every_build():
    # The `tokenizers` WordPiece trainer gave a different vocabulary on about half the trainings of
    # these texts ('delt' + '##a' one time, 'del' + '##ta' the next): a rerun of a method then
    # started from a different model. Ten builds must agree on every token and id.
    from densekit.models.tiny import train_tokenizer

    texts = _texts()
    first = train_tokenizer(texts, vocab_size=4000).get_vocab()
    for _ in range(10):
        assert train_tokenizer(texts, vocab_size=4000).get_vocab() == first


def test_tokenizer_keeps_frequent_words_and_spells_the_rest():
    from collections import Counter

    from densekit.models.tiny import train_tokenizer

    texts = _texts() + ["alphabet " * 40]
    counts = Counter(w for t in texts for w in t.split())
    chars = sorted(set("".join(counts)))
    room = 2 * len(chars)  # vocab_size below leaves this many entries for whole words
    tok = train_tokenizer(texts, vocab_size=5 + 4 * len(chars))
    vocab = tok.get_vocab()
    assert {c for c in chars} | {f"##{c}" for c in chars} <= set(vocab)
    want = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:room]]
    got = [t for t in vocab if t not in chars and not t.startswith(("##", "["))]
    assert sorted(got) == sorted(want) and "alphabet" in got
    rare = next(w for w in counts if w not in vocab)
    assert tok.tokenize("ALPHABET") == ["alphabet"]
    pieces = tok.tokenize(rare)  # spelled from the vocabulary: no unknown piece, nothing lost
    assert len(pieces) > 1 and "[UNK]" not in pieces
    assert "".join(x.removeprefix("##") for x in pieces) == rare
    assert tok.tokenize("q") == ["[UNK]"]  # a character the texts never had
