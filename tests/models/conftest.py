"""Fixtures for model tests: tiny encoders of each architecture and small training groups."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from densekit.data.records import passage

PASSAGES = [
    "dense retrieval trains small query and passage encoders",
    "a cross encoder teacher scores each query passage pair",
    "hard negatives are mined from a faiss index of the corpus",
    "margin mse distils the score margin of positive and negative",
    "layer wise distillation aligns the scores of chosen layers",
    "progressive distillation moves from weaker to stronger teachers",
    "static hard negatives and dynamic hard negatives train the query encoder",
    "the quick brown fox jumps over the lazy dog",
]
QUERIES = [
    "which encoders does dense retrieval train",
    "who scores query passage pairs",
    "where are hard negatives mined",
]


def make_groups(n_neg: int = 2, scores: bool = False) -> list[dict]:
    """Training-group records: query i has positive PASSAGES[i] and the next passages as negatives."""
    groups = []
    for i, q in enumerate(QUERIES):
        negs = [(i + 1 + k) % len(PASSAGES) for k in range(n_neg)]
        sc = (lambda j: float(10 - j)) if scores else (lambda j: None)
        groups.append(
            {
                "qid": f"q{i}",
                "query": q,
                "positives": [passage(f"p{i}", PASSAGES[i], f"title {i}", sc(i))],
                "negatives": [passage(f"p{j}", PASSAGES[j], "", sc(j)) for j in negs],
            }
        )
    return groups


@pytest.fixture(scope="session")
def data():
    """PASSAGES, QUERIES and make_groups (test modules cannot import conftest under importlib mode)."""
    return SimpleNamespace(passages=PASSAGES, queries=QUERIES, make_groups=make_groups)


@pytest.fixture(scope="session")
def arch_dirs(tmp_path_factory):
    """{arch: tiny model dir} for bert, distilbert, roberta (2 layers, hidden 32), one tokenizer each."""
    from densekit.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("arch")
    texts = PASSAGES + QUERIES
    return {
        a: build_tiny_model(
            root / a, texts, arch=a, layers=2, hidden=32, heads=2, intermediate=64, seed=1
        )
        for a in ("bert", "distilbert", "roberta")
    }


@pytest.fixture(scope="session")
def deep_bert_dir(tmp_path_factory):
    """A 4-layer tiny BERT (teacher for student tests)."""
    from densekit.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("deep") / "bert4", PASSAGES + QUERIES, layers=4, hidden=32, seed=2
    )
