"""mine: no judged-relevant document is ever a negative (not only the first positive), the rank
window and n are respected, sampling is seeded per query, texts come from the corpus."""

from __future__ import annotations

import numpy as np
import pytest

from densekit.artifacts import read_manifest, read_table
from densekit.config import MineConfig, load_config
from densekit.data import records as R
from densekit.errors import InputError
from densekit.pipelines.mine import mine, select_negatives

NUM_DOCS = 60


@pytest.fixture
def task(tmp_path, write_table):
    rng = np.random.default_rng(0)
    pids = [f"d{i}" for i in range(NUM_DOCS)]
    corpus = write_table(tmp_path / "corpus", R.CORPUS_SCHEMA, {
        R.PID: pids, R.TEXT: [f"text of {p}" for p in pids],
        R.TITLE: [None if i % 3 == 0 else f"title {i}" for i in range(NUM_DOCS)]})
    qids = [f"q{i}" for i in range(8)]
    queries = write_table(tmp_path / "queries", R.QUERIES_SCHEMA,
                          {R.QID: qids, R.TEXT: [f"query {q}" for q in qids]})
    qrels, run = [], []
    for i, q in enumerate(qids):
        ranked = [pids[j] for j in rng.permutation(NUM_DOCS)[:40]]
        if i == 7:
            run += [(q, p, r) for r, p in enumerate(ranked, 1)]
            continue  # q7 has no qrels at all: dropped and counted
        # Several relevant documents per query, at ranks 1, 4 and 9 (graded 1, 2, 1), plus one
        # judged not relevant (relevance 0, which stays a legitimate negative).
        qrels += [(q, ranked[0], 1), (q, ranked[3], 2), (q, ranked[8], 1), (q, ranked[5], 0)]
        run += [(q, p, r) for r, p in enumerate(ranked, 1)]
    qrels.append(("q0", "d_unretrieved", 1))  # a positive the run never found
    qrels_dir = write_table(tmp_path / "qrels", R.QRELS_SCHEMA, {
        R.QID: [r[0] for r in qrels], R.PID: [r[1] for r in qrels], R.RELEVANCE: [r[2] for r in qrels]})
    run_dir = write_table(tmp_path / "run", R.RUN_SCHEMA, {
        R.QID: [r[0] for r in run], R.PID: [r[1] for r in run], R.RANK: [r[2] for r in run],
        R.SCORE: [-float(r[2]) for r in run]}, rows_per_part=50)
    return {"corpus": corpus, "queries": queries, "qrels": qrels_dir, "run": run_dir,
            "qrels_rows": qrels, "run_rows": run}


def _cfg(task, out, *overrides):
    return load_config(MineConfig, overrides=[
        f"run={task['run']}", f"qrels={task['qrels']}", f"queries={task['queries']}",
        f"corpus={task['corpus']}", f"output={out}", *overrides])


def test_missing_passage_text_is_a_clear_error(tmp_path, task):
    # q0 has a positive ("d_unretrieved") that the corpus does not hold.
    cfg = _cfg(task, tmp_path / "groups", "min_rank=2", "max_rank=20", "num_negatives=6")
    with pytest.raises(InputError, match="d_unretrieved"):
        mine(cfg)


def test_random_runs_never_yield_a_relevant_negative():
    rng = np.random.default_rng(7)
    for trial in range(300):
        n_docs = int(rng.integers(5, 60))
        pids = [f"d{i}" for i in rng.permutation(n_docs)]
        ranks = list(range(1, n_docs + 1))
        judged = {p: int(rng.integers(0, 4)) for p in rng.choice(pids, size=int(rng.integers(1, n_docs)))}
        negs, _ = select_negatives(f"q{trial}", pids, ranks, judged, int(rng.integers(1, 5)),
                                   int(rng.integers(5, 80)), int(rng.integers(1, 20)),
                                   ["top", "sample"][trial % 2], trial)
        assert all(judged.get(p, 0) == 0 for p in negs)


def test_mine_groups(tmp_path, task, write_table):
    pids = [f"d{i}" for i in range(NUM_DOCS)] + ["d_unretrieved"]
    corpus = write_table(tmp_path / "corpus2", R.CORPUS_SCHEMA, {
        R.PID: pids, R.TEXT: [f"text of {p}" for p in pids], R.TITLE: [""] * len(pids)})
    task = {**task, "corpus": corpus}
    relevant = {(q, p) for q, p, r in task["qrels_rows"] if r > 0}
    rank_of = {(q, p): r for q, p, r in task["run_rows"]}
    mine(_cfg(task, tmp_path / "groups", "min_rank=2", "max_rank=20", "num_negatives=6"))
    groups = read_table(tmp_path / "groups").to_pylist()
    assert [g[R.QID] for g in groups] == [f"q{i}" for i in range(7)]  # q7: no positives
    for g in groups:
        q = g[R.QID]
        negs = [n[R.PID] for n in g[R.NEGATIVES]]
        assert len(negs) == 6 and len(set(negs)) == 6
        assert not any((q, p) in relevant for p in negs), "a judged-relevant document was a negative"
        ranks = [rank_of[(q, p)] for p in negs]
        assert all(2 <= r <= 20 for r in ranks) and ranks == sorted(ranks)
        pos = [p[R.PID] for p in g[R.POSITIVES]]
        # Positives: every relevance >= 1 judgement, highest relevance first.
        assert set(pos) == {p for qq, p in relevant if qq == q}
        assert rank_of[(q, pos[0])] == 4  # the relevance-2 document
        assert g[R.QUERY] == f"query {q}"
        assert all(n[R.TEXT] == f"text of {n[R.PID]}" and n[R.SCORE] is None for n in g[R.NEGATIVES])
    counts = read_manifest(tmp_path / "groups")["counts"]
    assert counts["no_positive"] == 1 and counts["groups"] == 7
    # Ranks 4 and 9 are relevant and inside [2, 20]: both removed, for each of the 7 queries.
    assert counts["judged_relevant_removed"] == 14

    # Seeded: the same config gives the same negatives; another seed, other negatives.
    mine(_cfg(task, tmp_path / "again", "min_rank=2", "max_rank=20", "num_negatives=6"))
    assert read_table(tmp_path / "again").to_pylist() == groups
    mine(_cfg(task, tmp_path / "seed1", "min_rank=2", "max_rank=20", "num_negatives=6", "seed=1"))
    assert read_table(tmp_path / "seed1").to_pylist() != groups


def test_select_negatives_by_hand():
    pids = ["a", "b", "c", "d", "e", "f", "g"]
    ranks = [1, 2, 3, 4, 5, 6, 7]
    judged = {"a": 1, "c": 2, "e": 0}  # e is judged NOT relevant: a valid negative
    negs, removed = select_negatives("q", pids, ranks, judged, 1, 6, 3, "top", 0)
    assert (negs, removed) == (["b", "d", "e"], 2)
    negs, _ = select_negatives("q", pids[::-1], ranks[::-1], judged, 2, 7, 10, "sample", 0)
    assert negs == ["b", "d", "e", "f", "g"]  # fewer than n: all of them, in rank order
    a, _ = select_negatives("q", pids, ranks, {}, 1, 7, 3, "sample", 5)
    b, _ = select_negatives("q", pids, ranks, {}, 1, 7, 3, "sample", 5)
    assert a == b and len(a) == 3


def test_run_scores_become_teacher_scores(tmp_path, task):
    """run_scores: every passage of a group carries its score in the run (the mining retriever is
    the teacher), so train can read them as offline teacher scores; a positive the run missed is
    dropped from its group (q0's "d_unretrieved", absent from the corpus too: no error now)."""
    out = tmp_path / "groups"
    mine(_cfg(task, out, "max_rank=20", "num_negatives=6", "strategy=top", "run_scores=true"))
    score_of = {(q, p): -float(r) for q, p, r in task["run_rows"]}
    groups = read_table(out).to_pylist()
    assert len(groups) == 7
    for g in groups:
        passages = g[R.POSITIVES] + g[R.NEGATIVES]
        assert len(g[R.NEGATIVES]) == 6
        for p in passages:
            assert p[R.SCORE] == score_of[(g[R.QID], p[R.PID])]
        assert "d_unretrieved" not in {p[R.PID] for p in g[R.POSITIVES]}
    counts = read_manifest(out)["counts"]
    assert counts["positives_not_retrieved"] == 1 and counts["no_retrieved_positive"] == 0


def test_positive_rank_window_keeps_the_queries_the_run_gets_wrong(tmp_path, write_table):
    # Best positive at rank 1 (a), 3 (b), 16 (c), missed by the run (d); b's second positive at 9.
    pids = [f"d{i}" for i in range(20)] + ["far"]
    corpus = write_table(tmp_path / "corpus", R.CORPUS_SCHEMA, {
        R.PID: pids, R.TEXT: [f"text of {p}" for p in pids], R.TITLE: [""] * len(pids)})
    queries = write_table(tmp_path / "queries", R.QUERIES_SCHEMA, {R.QID: list("abcd"), R.TEXT: list("abcd")})
    best = {"a": 1, "b": 3, "c": 16}
    qrels = [(q, f"d{r - 1}", 1) for q, r in best.items()] + [("b", "d8", 2), ("d", "far", 1)]
    qrels_dir = write_table(tmp_path / "qrels", R.QRELS_SCHEMA, {
        R.QID: [r[0] for r in qrels], R.PID: [r[1] for r in qrels], R.RELEVANCE: [r[2] for r in qrels]})
    run = [(q, f"d{r - 1}", r) for q in "abcd" for r in range(1, 21)]
    run_dir = write_table(tmp_path / "run", R.RUN_SCHEMA, {
        R.QID: [r[0] for r in run], R.PID: [r[1] for r in run], R.RANK: [r[2] for r in run],
        R.SCORE: [-float(r[2]) for r in run]})
    task = {"run": run_dir, "qrels": qrels_dir, "queries": queries, "corpus": corpus}

    mine(_cfg(task, tmp_path / "all", "max_rank=15", "num_negatives=15", "strategy=top"))
    assert [g[R.QID] for g in read_table(tmp_path / "all").to_pylist()] == list("abcd")
    mine(_cfg(task, tmp_path / "window", "max_rank=15", "num_negatives=15", "strategy=top",
              "positive_min_rank=2", "positive_max_rank=15"))
    kept = read_table(tmp_path / "window").to_pylist()
    assert [g[R.QID] for g in kept] == ["b"]  # its best positive (rank 3) decides, not the one at 9
    assert [p[R.PID] for p in kept[0][R.POSITIVES]] == ["d8", "d2"]
    assert read_manifest(tmp_path / "window")["counts"]["positive_rank_outside"] == 3
    mine(_cfg(task, tmp_path / "below", "max_rank=15", "num_negatives=15", "positive_min_rank=2"))
    assert [g[R.QID] for g in read_table(tmp_path / "below").to_pylist()] == ["b", "c"]
    with pytest.raises(Exception, match="positive_min_rank"):
        _cfg(task, tmp_path / "bad", "positive_min_rank=5", "positive_max_rank=2")
