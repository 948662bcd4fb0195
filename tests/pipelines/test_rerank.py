"""rerank: each query's top `depth` candidates of a run, reordered by a cross-encoder's score of the
pair computed one pair at a time through the model's public API; a run `evaluate` reads; a passage
missing from the corpus is named before Ray starts the reranker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekit.artifacts import read_manifest, read_table
from densekit.config import RerankConfig, load_config
from densekit.data import records as R
from densekit.errors import DensekitError
from densekit.pipelines.rerank import rerank

CORPUS = {
    "d1": ("passage encoders are small", "dense"),
    "d2": ("the lazy dog", ""),
    "d3": ("a cross encoder teacher scores each pair", "teacher"),
    "d4": ("faiss index of the corpus and the hard negatives mined from it", ""),
    "d5": ("margin mse distils the score margin", ""),
    "d6": ("quick brown fox", "fox"),
}
QUERIES = {"q1": "dense retrieval of passages", "q2": "margin mse", "q3": "which teacher"}
# The first-stage run: q1 has 5 candidates (depth 3 keeps ranks 1-3), q2 2, q3 1. Rows are grouped
# by query but not sorted by rank inside it: rerank reads the ranks, not the row order.
RUN = [("q1", "d4", 2), ("q1", "d1", 1), ("q1", "d2", 3), ("q1", "d3", 4), ("q1", "d5", 5),
       ("q2", "d5", 1), ("q2", "d6", 2), ("q3", "d3", 1)]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory, tiny_model_dir):
    from densekit.models import build_model
    from densekit.models.spec import ModelSpec

    root = tmp_path_factory.mktemp("reranker")
    torch.manual_seed(1)  # the new head starts random
    build_model(ModelSpec(kind="cross_encoder"), tiny_model_dir).save(root / "ce")
    return str(root / "ce")


@pytest.fixture
def tables(tmp_path, write_table):
    corpus = write_table(tmp_path / "corpus", R.CORPUS_SCHEMA, {
        R.PID: list(CORPUS), R.TEXT: [t for t, _ in CORPUS.values()], R.TITLE: [t for _, t in CORPUS.values()]})
    queries = write_table(tmp_path / "queries", R.QUERIES_SCHEMA, {R.QID: list(QUERIES), R.TEXT: list(QUERIES.values())})
    run = write_table(tmp_path / "run", R.RUN_SCHEMA, {
        R.QID: [q for q, _, _ in RUN], R.PID: [p for _, p, _ in RUN], R.RANK: [r for _, _, r in RUN],
        R.SCORE: [1.0 / r for _, _, r in RUN]})
    return corpus, queries, run


def _direct(model_dir: str, query: str, pid: str) -> float:
    """Reference: the cross-encoder on one (query, passage) pair, through its public API."""
    from densekit.models import load_model

    m = load_model(model_dir)
    text, title = CORPUS[pid]
    with torch.inference_mode():
        return float(m.score_pairs(**m.tokenize_pairs([query], [text], [title]))[0])


def _cfg(tmp_path, corpus, queries, run, reranker, *extra):
    return load_config(RerankConfig, overrides=[
        f"run={run}", f"queries={queries}", f"corpus={corpus}", f"reranker={reranker}",
        f"output={tmp_path / 'reranked'}", "depth=3", "batch_size=2", "resources.cpus_per_worker=0.5", *extra])


@pytest.mark.ray
def test_rerank_orders_the_top_candidates_by_the_cross_encoder(tmp_path, ray_session, cross_encoder, tables):
    corpus, queries, run = tables
    rerank(_cfg(tmp_path, corpus, queries, run, cross_encoder))
    out = read_table(tmp_path / "reranked").to_pylist()
    for qid, query in QUERIES.items():
        first = sorted((r for q, _, r in RUN if q == qid))[:3]
        top = [p for q, p, r in RUN if q == qid and r in first]
        ref = {p: _direct(cross_encoder, query, p) for p in top}
        want = sorted(top, key=lambda p: -ref[p])
        rows = [r for r in out if r[R.QID] == qid]
        assert [r[R.PID] for r in rows] == want  # only the top 3, in the reranker's order
        assert [r[R.RANK] for r in rows] == list(range(1, len(want) + 1))
        np.testing.assert_allclose([r[R.SCORE] for r in rows], [ref[p] for p in want], rtol=1e-4, atol=1e-5)
    # The CE's order differs from the run's somewhere, or this test would not see a rerank at all.
    assert [r[R.PID] for r in out if r[R.QID] == "q1"] != ["d1", "d4", "d2"]
    trec = (tmp_path / "reranked" / "_run.trec").read_text().splitlines()
    assert len(trec) == len(out) and trec[0].split()[0] == out[0][R.QID]
    m = read_manifest(tmp_path / "reranked")
    assert m["depth"] == 3 and m["pairs"] == 3 + 2 + 1 and m["num_queries"] == 3
    from densekit.pipelines.embeddings import model_fingerprint

    assert m["reranker_fingerprint"] == model_fingerprint(cross_encoder)
    leftovers = [p.name for p in tmp_path.iterdir() if "rerank-" in p.name]
    assert leftovers == []  # the scratch candidates are gone


@pytest.mark.ray
def test_rerank_only_the_judged_queries(tmp_path, ray_session, cross_encoder, tables, write_table):
    corpus, queries, run = tables
    qrels = write_table(tmp_path / "qrels", R.QRELS_SCHEMA, {R.QID: ["q2", "q2"], R.PID: ["d5", "d1"],
                                                             R.RELEVANCE: [1, 0]})
    rerank(_cfg(tmp_path, corpus, queries, run, cross_encoder, f"qrels={qrels}"))
    out = read_table(tmp_path / "reranked").to_pylist()
    assert {r[R.QID] for r in out} == {"q2"} and len(out) == 2
    assert read_manifest(tmp_path / "reranked")["num_queries"] == 1


@pytest.mark.ray
def test_rerank_names_a_passage_missing_from_the_corpus(tmp_path, ray_session, cross_encoder, tables, write_table):
    corpus, queries, _ = tables
    run = write_table(tmp_path / "bad_run", R.RUN_SCHEMA, {
        R.QID: ["q1", "q1"], R.PID: ["d1", "nope"], R.RANK: [1, 2], R.SCORE: [2.0, 1.0]})
    with pytest.raises(DensekitError, match=r"passage 'nope'.*not in the corpus") as e:
        rerank(_cfg(tmp_path, corpus, queries, run, cross_encoder))
    assert str(corpus) in str(e.value)
    assert not list(tmp_path.glob(".reranked.rerank-*"))


def test_rerank_config_refuses_depth_0_and_an_unknown_kind():
    with pytest.raises(DensekitError, match="depth"):
        load_config(RerankConfig, overrides=["run=r", "queries=q", "corpus=c", "output=o", "reranker=m", "depth=0"])
    with pytest.raises(DensekitError, match="cross_encoder"):
        load_config(RerankConfig, overrides=["run=r", "queries=q", "corpus=c", "output=o", "reranker=m",
                                             "kind=cross-encoder"])
