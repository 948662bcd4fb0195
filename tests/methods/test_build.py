"""`densekit build`: a small encoder built offline from a table's texts, or sharing another model's
tokenizer; loads with transformers; a rerun of the same config does nothing."""

from __future__ import annotations

import pytest

from densekit.artifacts import TableWriter, read_manifest, write_manifest
from densekit.config import BuildConfig, load_config
from densekit.data.records import CORPUS_SCHEMA, QUERIES_SCHEMA
from densekit.errors import ConfigError
from densekit.pipelines.build import build, iter_texts

DOCS = ["zorblat quinex fell", "quinex marvo", "marvo zorblat tesh"]


@pytest.fixture
def tables(tmp_path):
    corpus, queries = tmp_path / "corpus", tmp_path / "queries"
    with TableWriter(corpus, CORPUS_SCHEMA) as w:
        w.write({"pid": ["d0", "d1", "d2"], "text": DOCS, "title": ["glimmot", "", "glimmot"]})
    write_manifest(corpus, "test")
    with TableWriter(queries, QUERIES_SCHEMA) as w:
        w.write({"qid": ["q0"], "text": ["vexillo zorblat"]})
    write_manifest(queries, "test")
    return corpus, queries


def test_iter_texts_reads_text_and_titles(tables):
    corpus, queries = tables
    assert list(iter_texts([str(corpus), str(queries)])) == [
        DOCS[0], "glimmot", DOCS[1], DOCS[2], "glimmot", "vexillo zorblat"
    ]
    assert list(iter_texts([str(corpus)], max_rows=1)) == [DOCS[0], "glimmot"]


def test_build_then_share_tokenizer(tables, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    corpus, queries = tables
    small = tmp_path / "small"
    cfg = load_config(BuildConfig, None, [f"output={small}", f"texts=[{corpus},{queries}]", "layers=1", "hidden=16", "heads=2"])
    build(cfg)
    manifest = read_manifest(small)
    c = AutoConfig.from_pretrained(str(small))
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (1, 16, 64)  # 4 x hidden
    tok = AutoTokenizer.from_pretrained(str(small))
    # Words of the tables are whole tokens (the tokenizer was trained on them), others are not.
    for word in ("zorblat", "quinex", "glimmot", "vexillo"):
        assert tok.tokenize(word) == [word]
    AutoModel.from_pretrained(str(small))

    big = tmp_path / "big"
    build(load_config(BuildConfig, None, [f"output={big}", f"tokenizer_from={small}", "layers=3", "hidden=24", "heads=3", "seed=1"]))
    assert AutoConfig.from_pretrained(str(big)).num_hidden_layers == 3
    text = "zorblat vexillo unseenword"
    assert AutoTokenizer.from_pretrained(str(big))(text)["input_ids"] == tok(text)["input_ids"]

    build(cfg)  # the same config again: nothing to do
    assert read_manifest(small) == manifest


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["texts=[]"], "either texts"),
        (["texts=[a]", "tokenizer_from=b"], "either texts"),
        (["texts=[a]", "hidden=30", "heads=4"], "must divide by heads"),
        (["texts=[a]", "arch=bret"], "Did you mean 'bert'"),
    ],
)
def test_bad_configs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(BuildConfig, None, ["output=x", *overrides])
