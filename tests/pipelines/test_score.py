"""score: each teacher kind (cross-encoder, ColBERT MaxSim, bi-encoder dot) gives the scores of a
direct one-pair-at-a-time computation; the Ray pipeline writes the ensemble mean into the groups
(input order kept) and the Margin-MSE teacher TSV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekit.artifacts import read_manifest, read_table
from densekit.config import ScoreConfig, load_config
from densekit.data import records as R
from densekit.pipelines.score import TeacherScorer, combine_scores, score
from densekit_testdata import needs_cxx

GROUPS = [
    ("q1", "dense retrieval of passages", [("d1", "passage encoders are small", "dense")],
     [("d2", "the lazy dog", ""), ("d3", "a cross encoder teacher scores each pair", "teacher"),
      ("d4", "faiss index of the corpus and the hard negatives mined from it", "")]),
    ("q2", "margin mse", [("d5", "margin mse distils the score margin", ""), ("d6", "positive margin", "mse")],
     [("d7", "quick brown fox", "fox"), ("d8", "layer wise distillation", "")]),
    ("q3", "which teacher", [("d9", "progressive distillation moves from weaker to stronger teachers", "")], []),
    ("q4", "hard negatives", [("d10", "static hard negatives", "")], [("d11", "dynamic hard negatives train", "")]),
]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_model_dir):
    from densekit.models import build_model
    from densekit.models.spec import ModelSpec

    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)  # the new heads start random
    build_model(ModelSpec(kind="cross_encoder"), tiny_model_dir).save(root / "ce")
    build_model(ModelSpec(kind="colbert", colbert_dim=16), tiny_model_dir).save(root / "colbert")
    return {"bi_encoder": str(tiny_model_dir), "cross_encoder": str(root / "ce"),
            "colbert": str(root / "colbert")}


def _direct(model_dir: str, query: str, text: str, title: str) -> float:
    """Reference: the model on one (query, passage) pair, through its public API."""
    from densekit.models import load_model

    m = load_model(model_dir)
    with torch.inference_mode():
        if m.kind == "cross_encoder":
            return float(m.score_pairs(**m.tokenize_pairs([query], [text], [title]))[0])
        q = m.encode_queries(**m.tokenize_queries([query]))
        p = m.encode_passages(**m.tokenize_passages([text], [title]))
        if m.kind == "colbert":
            return float(m.maxsim(q[0], q[1], p[0], p[1])[0, 0])
        return float(q[0] @ p[0])


def _groups_columns():
    def side(ps):
        return [R.passage(pid, text, title) for pid, text, title in ps]
    return {R.QID: [g[0] for g in GROUPS], R.QUERY: [g[1] for g in GROUPS],
            R.POSITIVES: [side(g[2]) for g in GROUPS], R.NEGATIVES: [side(g[3]) for g in GROUPS]}


def _reference(model_dir: str) -> dict[tuple[str, str], float]:
    return {(qid, pid): _direct(model_dir, q, text, title)
            for qid, q, pos, neg in GROUPS for pid, text, title in pos + neg}


@pytest.mark.parametrize(("kind", "compile"), [("bi_encoder", False), ("cross_encoder", False),
                                               ("colbert", False),
                                               pytest.param("cross_encoder", True, marks=needs_cxx),
                                               pytest.param("colbert", True, marks=needs_cxx)])
def test_teacher_scorer_equals_direct_computation(teachers, kind, compile):
    from densekit.models.compiled import CompiledInference

    ref = _reference(teachers[kind])
    scorer = TeacherScorer(teachers[kind], kind=kind, batch_size=3, compile=compile)  # batches mix groups
    assert scorer.kind == kind
    assert isinstance(scorer._pairs, CompiledInference) is compile
    got = scorer.score([g[1] for g in GROUPS], [[{R.TEXT: t, R.TITLE: ti} for _, t, ti in g[2] + g[3]]
                                               for g in GROUPS])
    for g, scores in zip(GROUPS, got):
        want = [ref[(g[0], pid)] for pid, _, _ in g[2] + g[3]]
        np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5)
    if compile:
        assert not scorer._pairs.failed and scorer._pairs.calls > 1


def test_pairs_are_counted_from_the_metadata(tmp_path, write_table):
    from densekit.pipelines.score import count_pairs

    groups = write_table(tmp_path / "groups", R.GROUPS_SCHEMA, _groups_columns(), rows_per_part=3)
    passages = sum(len(g[2]) + len(g[3]) for g in GROUPS)
    assert count_pairs(groups) == passages + 1  # + q3's empty list of negatives


def test_combine_scores_places_the_mean():
    import pyarrow as pa

    table = pa.table(_groups_columns(), schema=R.GROUPS_SCHEMA)
    sizes = [len(g[2]) + len(g[3]) for g in GROUPS]
    a = [list(np.arange(n, dtype=np.float32) + 10 * i) for i, n in enumerate(sizes)]
    b = [list(-np.arange(n, dtype=np.float32)) for n in sizes]
    table = table.append_column("a", pa.array(a, pa.list_(pa.float32())))
    table = table.append_column("b", pa.array(b, pa.list_(pa.float32())))
    out = combine_scores(table, ["a", "b"]).to_pylist()
    assert out[1][R.POSITIVES][1][R.SCORE] == pytest.approx((11 + -1) / 2)  # group 2, 2nd passage
    assert out[1][R.NEGATIVES][0][R.SCORE] == pytest.approx((12 + -2) / 2)
    assert out[2][R.NEGATIVES] == [] and out[2][R.POSITIVES][0][R.SCORE] == pytest.approx(10.0)
    assert "a" not in out[0]


@pytest.mark.ray
def test_score_step_ensemble_and_margin_mse_tsv(tmp_path, ray_session, teachers, write_table):
    groups = write_table(tmp_path / "groups", R.GROUPS_SCHEMA, _groups_columns(), rows_per_part=3)
    tsv = tmp_path / "teacher.tsv"
    kinds = ["cross_encoder", "colbert"]  # bi-encoder teachers: test_teacher_scorer_equals_direct_computation
    cfg = load_config(ScoreConfig, overrides=[
        f"groups={groups}", f"output={tmp_path / 'scored'}", f"margin_mse_tsv={tsv}", "batch_size=4",
        "resources.cpus_per_worker=0.5", "teachers=[" + ",".join(
            f"{{model: '{teachers[k]}', kind: {k}}}" for k in kinds) + "]"])
    score(cfg)
    refs = [_reference(teachers[k]) for k in kinds]
    out = read_table(tmp_path / "scored").to_pylist()
    assert [g[R.QID] for g in out] == [g[0] for g in GROUPS]  # input order kept
    for g in out:
        for p in g[R.POSITIVES] + g[R.NEGATIVES]:
            want = np.mean([r[(g[R.QID], p[R.PID])] for r in refs])
            assert p[R.SCORE] == pytest.approx(want, rel=1e-4, abs=1e-5)
            assert p[R.TEXT]  # texts kept
    m = read_manifest(tmp_path / "scored")
    assert m["ensemble"] == "mean" and [t["kind"] for t in m["teachers"]] == kinds
    lines = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert len(lines) == sum(len(g[2]) * len(g[3]) for g in GROUPS)
    by_id = {(g[R.QID], p[R.PID]): p[R.SCORE] for g in out for p in g[R.POSITIVES] + g[R.NEGATIVES]}
    pos_score, neg_score, qid, pos, neg = lines[0]
    assert (qid, pos, neg) == ("q1", "d1", "d2")
    assert float(pos_score) == pytest.approx(by_id[("q1", "d1")], rel=1e-6)
    assert float(neg_score) == pytest.approx(by_id[("q1", "d2")], rel=1e-6)
