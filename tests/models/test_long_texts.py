"""Long documents (MS MARCO documents: ~6.5 KB on average, a tail of 100s of KB) are cut to a
character budget before tokenising: the tokens, hence the embeddings, are those of the whole
text, and each long text is tokenised about once (not once to check its prefix and once more)."""

from __future__ import annotations

import random

import pytest
import torch

from densekit.models import load_model
from densekit.models.tokenization import CHARS_PER_TOKEN, tokenize_long_texts
from densekit_testdata import PASSAGES

MAX_LEN = 64


def _words() -> list[str]:
    return sorted(
        {w for p in PASSAGES for w in p.lower().replace(".", " ").replace(",", " ").split()}
    )


def _long_docs(n: int, chars: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = _words()
    docs = []
    for _ in range(n):
        out, size = [], 0
        while size < chars:
            w = rng.choice(words)
            out.append(w)
            size += len(w) + 1
        docs.append(" ".join(out))
    return docs


class CountingTokenizer:
    """A tokenizer that counts the characters it is given (and otherwise is the tokenizer)."""

    def __init__(self, tok):
        self.tok, self.chars = tok, 0

    def __call__(self, first, second=None, **kwargs):
        for seg in (first, second):
            if seg is not None:
                self.chars += len(seg) if isinstance(seg, str) else sum(len(t or "") for t in seg)
        return self.tok(first, second, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _full(tok, texts):
    """What the tokenizer gives for the whole texts (no cut at all)."""
    return tok(texts, padding="longest", truncation=True, max_length=MAX_LEN, return_tensors="pt")


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_long_document_gives_the_same_embedding_with_and_without_the_cut(arch_dirs, arch):
    model = load_model(
        str(arch_dirs[arch]), kind="bi_encoder", overrides={"max_passage_length": MAX_LEN}
    ).eval()
    tok = model.tokenization.passage_tokenizer
    docs = _long_docs(3, 40_000) + ["short text about retrieval"]  # 40 KB: far past the budget
    assert all(len(d) > MAX_LEN * CHARS_PER_TOKEN for d in docs[:3])
    cut = model.tokenize_passages(docs)
    full = _full(tok, docs)
    assert torch.equal(cut["input_ids"], full["input_ids"])
    assert torch.equal(cut["attention_mask"], full["attention_mask"])
    with torch.no_grad():
        emb_cut = model.encode_passages(**cut)
        emb_full = model.encode_passages(**{k: v for k, v in full.items() if k in cut})
    assert torch.equal(emb_cut, emb_full)


def test_each_long_text_is_tokenised_once(arch_dirs):
    model = load_model(str(arch_dirs["bert"]), kind="bi_encoder")
    tok = CountingTokenizer(model.tokenization.passage_tokenizer)
    docs = _long_docs(8, 30_000, seed=1)
    enc = tokenize_long_texts(tok, docs, None, MAX_LEN, padding="longest", truncation=True)
    assert torch.equal(enc["input_ids"], _full(tok.tok, docs)["input_ids"])
    # One pass over a budget-sized prefix of each: not the 30 KB, and not the prefix twice.
    assert tok.chars <= len(docs) * MAX_LEN * CHARS_PER_TOKEN


def test_prefix_of_too_few_tokens_is_cut_again_with_a_check(arch_dirs):
    """Words longer than the tokenizer's per-word limit are one [UNK] each: the budget's prefix
    holds too few tokens to fill the row, so that row gets a checked (longer) prefix."""
    model = load_model(str(arch_dirs["bert"]), kind="bi_encoder")
    tok = model.tokenization.passage_tokenizer
    rng = random.Random(2)
    long_words = " ".join("".join(rng.choice("abcdef") for _ in range(150)) for _ in range(200))
    docs = [long_words, _long_docs(1, 30_000)[0], "a short one"]
    enc = tokenize_long_texts(tok, docs, None, MAX_LEN, padding="longest", truncation=True)
    full = _full(tok, docs)
    assert torch.equal(enc["input_ids"], full["input_ids"])
    assert int(enc["attention_mask"][0].sum()) == MAX_LEN  # the row is full, as for the whole text


def test_text_without_whitespace_is_cut_by_the_checked_path(arch_dirs):
    model = load_model(str(arch_dirs["bert"]), kind="bi_encoder")
    tok = model.tokenization.passage_tokenizer
    docs = ["retrieval," * 5_000]  # 50 KB, no whitespace: punctuation splits it into many tokens
    enc = tokenize_long_texts(tok, docs, None, MAX_LEN, padding="longest", truncation=True)
    assert torch.equal(enc["input_ids"], _full(tok, docs)["input_ids"])
