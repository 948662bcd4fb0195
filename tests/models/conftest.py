"""Fixtures for model tests: tiny encoders of each architecture and small training groups."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from densekit_testdata import PASSAGES, QUERIES, make_groups


@pytest.fixture(scope="session")
def data():
    """PASSAGES, QUERIES and make_groups from densekit_testdata, as one fixture."""
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
