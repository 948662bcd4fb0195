"""evaluate: hand-worked values on a small example, agreement with ir-measures on a larger run,
the zero-for-unretrieved convention, and the paired significance tests."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from densekit.artifacts import read_table
from densekit.config import EvaluateConfig, load_config
from densekit.data import records as R
from densekit.errors import ConfigError, IncompleteOutputError, InputError
from densekit.pipelines.evaluate import evaluate, evaluate_run, paired_tests, parse_metric


def _run_columns(run: dict[str, dict[str, float]]) -> dict:
    cols = {R.QID: [], R.PID: [], R.RANK: [], R.SCORE: []}
    for qid, docs in run.items():
        for rank, (pid, score) in enumerate(sorted(docs.items(), key=lambda kv: -kv[1]), 1):
            cols[R.QID].append(qid)
            cols[R.PID].append(pid)
            cols[R.RANK].append(rank)
            cols[R.SCORE].append(score)
    return cols


def _qrels_columns(qrels: dict[str, dict[str, int]]) -> dict:
    rows = [(q, p, r) for q, docs in qrels.items() for p, r in docs.items()]
    return {R.QID: [r[0] for r in rows], R.PID: [r[1] for r in rows], R.RELEVANCE: [r[2] for r in rows]}


# q1: relevant d1 (1) and d3 (2), d5 judged not relevant; retrieved at ranks 2 and 3.
# q2: its only relevant document is at rank 11 (outside every @10 cut-off).
# q3: judged, never retrieved: counts 0 everywhere. q4: retrieved, never judged: ignored.
HAND_QRELS = {"q1": {"d1": 1, "d3": 2, "d5": 0}, "q2": {"d7": 1}, "q3": {"d10": 1}}
HAND_RUN = {
    "q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7, "d4": 0.6},
    "q2": {**{f"x{i}": 1.0 - i / 100 for i in range(10)}, "d7": 0.5},
    "q4": {"d1": 1.0},
}
# Worked by hand:
#   q1 nDCG@10 = (1/log2(3) + 2/log2(4)) / (2/log2(2) + 1/log2(3)) = 1.6309298 / 2.6309298
#   q1 AP = (1/2 + 2/3) / 2; q2 AP = (1/11) / 1; q2 RR (no cut) = 1/11, RR@10 = 0
Q1_NDCG = (1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3))
HAND_MEANS = {
    "mrr@10": (0.5 + 0 + 0) / 3,
    "mrr": (0.5 + 1 / 11 + 0) / 3,
    "ndcg@10": Q1_NDCG / 3,
    "recall@2": (0.5 + 0 + 0) / 3,
    "recall@100": (1 + 1 + 0) / 3,
    "map": ((0.5 + 2 / 3) / 2 + 1 / 11 + 0) / 3,
}


def test_hand_worked_example(tmp_path, write_table):
    run = write_table(tmp_path / "run", R.RUN_SCHEMA, _run_columns(HAND_RUN))
    qrels = write_table(tmp_path / "qrels", R.QRELS_SCHEMA, _qrels_columns(HAND_QRELS))
    cfg = load_config(
        EvaluateConfig,
        overrides=[f"run={run}", f"qrels={qrels}", f"output={tmp_path / 'eval'}",
                   "metrics=[mrr@10,mrr,ndcg@10,recall@2,recall@100,map]"],
    )
    evaluate(cfg)
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert Q1_NDCG == pytest.approx(0.6199062, abs=1e-7)
    for name, value in HAND_MEANS.items():
        assert summary["metrics"][name] == pytest.approx(value, abs=1e-9), name
    assert summary["num_queries"] == 3
    assert summary["num_queries_not_retrieved"] == 1
    assert summary["num_run_queries_not_judged"] == 1
    per_query = read_table(tmp_path / "eval" / "per_query").to_pydict()
    assert per_query[R.QID] == ["q1", "q2", "q3"]
    assert per_query["ndcg@10"] == pytest.approx([Q1_NDCG, 0.0, 0.0])
    assert per_query["mrr"] == pytest.approx([0.5, 1 / 11, 0.0])
    # A second run with the same config does nothing (output complete).
    mtime = (tmp_path / "eval" / "metrics.json").stat().st_mtime_ns
    evaluate(cfg)
    assert (tmp_path / "eval" / "metrics.json").stat().st_mtime_ns == mtime


def test_mrr_cutoff_breaks_ties_like_trec_eval():
    # trec_eval orders by score, then docid descending: "b" comes before "a" at the tied score.
    run = {"q": {"a": 1.0, "b": 1.0, "c": 0.5}}
    qrels = {"q": {"a": 1}}
    values = evaluate_run(run, qrels, ["mrr@1", "mrr@2", "mrr"])["q"]
    assert values == {"mrr@1": 0.0, "mrr@2": 0.5, "mrr": 0.5}


def test_matches_ir_measures_on_a_larger_run():
    ir_measures = pytest.importorskip("ir_measures")
    rng = np.random.default_rng(0)
    qrels, run = {}, {}
    for q in range(80):
        qid = f"q{q}"
        docs = [f"d{i}" for i in rng.choice(2000, size=300, replace=False)]
        # Distinct scores: tie-breaking rules differ between implementations.
        scores = rng.permutation(300) / 300.0 + q
        run[qid] = {d: float(s) for d, s in zip(docs[:250], scores[:250])}
        # Judge mostly well-ranked documents (so MRR@10 and nDCG@10 are rarely 0) and a few
        # documents the run never retrieved (positions 250..299).
        top = np.argsort(-scores[:250])
        judged = np.concatenate([top[rng.choice(30, size=10, replace=False)],
                                 250 + rng.choice(50, size=2, replace=False)])
        rels = rng.integers(0, 3, size=12)
        rels[0] = max(rels[0], 1)  # every query has a relevant document
        qrels[qid] = {docs[j]: int(r) for j, r in zip(judged, rels)}
    ours = evaluate_run(run, qrels, ["mrr@10", "ndcg@10", "recall@100", "map", "p@5"])
    names = {"mrr@10": "RR@10", "ndcg@10": "nDCG@10", "recall@100": "R@100", "map": "AP", "p@5": "P@5"}
    measures = [ir_measures.parse_measure(v) for v in names.values()]
    theirs: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc(measures, qrels, run):
        theirs.setdefault(m.query_id, {})[str(m.measure)] = m.value
    assert set(theirs) == set(ours)
    for qid in ours:
        for ours_name, their_name in names.items():
            assert ours[qid][ours_name] == pytest.approx(theirs[qid][their_name], abs=1e-9), (
                qid, ours_name)
    # ir-measures computes RR@10 with its own msmarco provider but nDCG, R, AP and P through
    # pytrec_eval, like us: check those against brute-force code as well.
    for qid, docs in run.items():
        ranked = [p for p, _ in sorted(docs.items(), key=lambda kv: -kv[1])]
        rel = qrels[qid]
        relevant = {p for p, r in rel.items() if r >= 1}
        dcg = sum(rel.get(p, 0) / math.log2(i + 2) for i, p in enumerate(ranked[:10]))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        hits = [i for i, p in enumerate(ranked) if p in relevant]
        ap = sum((n + 1) / (i + 1) for n, i in enumerate(hits)) / len(relevant)
        assert ours[qid]["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-9)
        assert ours[qid]["recall@100"] == pytest.approx(len(relevant & set(ranked[:100])) / len(relevant))
        assert ours[qid]["map"] == pytest.approx(ap, abs=1e-9)
        assert ours[qid]["p@5"] == pytest.approx(len(relevant & set(ranked[:5])) / 5)
    print("\nmean over 80 queries:",
          {n: round(np.mean([ours[q][n] for q in ours]), 4) for n in names})


def test_paired_tests_against_hand_computation():
    a = np.array([0.5, 0.2, 0.9, 0.4, 0.7])
    b = np.array([0.3, 0.2, 0.5, 0.5, 0.4])
    d = a - b
    out = paired_tests(a, b, permutations=20_000, seed=1)
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert out["diff"] == pytest.approx(d.mean())
    assert out["t_statistic"] == pytest.approx(t_hand)
    # Exact randomisation p-value: all 2^5 sign patterns.
    exact = np.mean([abs((np.array(s) * d).mean()) >= abs(d.mean()) - 1e-12
                     for s in itertools.product([-1, 1], repeat=len(d))])
    assert out["randomization_p"] == pytest.approx(exact, abs=0.01)
    same = paired_tests(a, a, permutations=100)
    assert same["t_test_p"] is None and same["randomization_p"] == 1.0


def test_comparison_written(tmp_path, write_table):
    qrels = write_table(tmp_path / "qrels", R.QRELS_SCHEMA, _qrels_columns(HAND_QRELS))
    run = write_table(tmp_path / "run", R.RUN_SCHEMA, _run_columns(HAND_RUN))
    worse = {q: {p: -s for p, s in docs.items()} for q, docs in HAND_RUN.items()}  # reversed order
    base = write_table(tmp_path / "base", R.RUN_SCHEMA, _run_columns(worse))
    cfg = load_config(EvaluateConfig, overrides=[
        f"run={run}", f"qrels={qrels}", f"baseline={base}", f"output={tmp_path / 'cmp'}",
        "metrics=[mrr@10,map]", "permutations=2000"])
    evaluate(cfg)
    comp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    base_mrr = evaluate_run(worse, HAND_QRELS, ["mrr@10"])
    assert comp["metrics"]["mrr@10"]["baseline"] == pytest.approx(
        np.mean([v["mrr@10"] for v in base_mrr.values()]))
    assert comp["metrics"]["mrr@10"]["run"] == pytest.approx(HAND_MEANS["mrr@10"])
    assert 0 < comp["metrics"]["map"]["randomization_p"] <= 1


def test_bad_inputs(tmp_path, write_table):
    with pytest.raises(ConfigError, match="Did you mean 'ndcg'"):
        parse_metric("ndgc@10")
    with pytest.raises(ConfigError, match="needs a cut-off"):
        parse_metric("recall")
    assert parse_metric("nDCG@10").key == "ndcg_cut_10"
    qrels = write_table(tmp_path / "qrels", R.QRELS_SCHEMA, _qrels_columns(HAND_QRELS))
    dup = write_table(tmp_path / "dup", R.RUN_SCHEMA,
                      {R.QID: ["q1", "q1"], R.PID: ["d1", "d1"], R.RANK: [1, 2], R.SCORE: [1.0, 0.5]})
    cfg = load_config(EvaluateConfig, overrides=[f"run={dup}", f"qrels={qrels}", f"output={tmp_path / 'o'}"])
    with pytest.raises(InputError, match="lists document 'd1' twice"):
        evaluate(cfg)
    (tmp_path / "run_partial").mkdir()
    cfg = load_config(EvaluateConfig, overrides=[
        f"run={tmp_path / 'run_partial'}", f"qrels={qrels}", f"output={tmp_path / 'o2'}"])
    with pytest.raises(IncompleteOutputError):
        evaluate(cfg)
