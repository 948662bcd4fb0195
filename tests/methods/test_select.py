"""`densekit select` (PROD's data-progressive step): which queries are kept, and what their groups hold.

Every case is worked out by hand below: the student's rank of the first positive comes from the run,
the teacher's rank from its scores of the student's candidates (retrieved positives + negatives).
"""

from __future__ import annotations

import pytest

from densekit.artifacts import TableWriter, read_manifest, read_table, write_manifest
from densekit.config import SelectConfig, load_config
from densekit.data.records import GROUPS_SCHEMA, QRELS_SCHEMA, RUN_SCHEMA, passage
from densekit.errors import ConfigError, InputError
from densekit.pipelines.select import select


def table(path, schema, rows):
    with TableWriter(path, schema) as w:
        w.write({name: [r[i] for r in rows] for i, name in enumerate(schema.names)})
    write_manifest(path, "test")
    return path


# qid -> (student ranking, positives, teacher scores of that ranking by pid)
CASES = {
    # student ranks the positive 1st: already right, dropped (student_top)
    "q_top": (["p", "a", "b"], {"p"}, {"p": 9.0, "a": 1.0, "b": 0.0}),
    # student rank 3, teacher puts the positive first: KEPT
    "q_keep": (["a", "b", "p", "c", "d"], {"p"}, {"a": 2.0, "b": 1.0, "p": 5.0, "c": 0.0, "d": -1.0}),
    # student rank 2, teacher ranks a negative above the positive: teacher_wrong
    "q_twrong": (["a", "p", "b"], {"p"}, {"a": 5.0, "p": 4.0, "b": 0.0}),
    # student rank 2, a tie between the positive and a negative counts against the positive
    "q_tie": (["a", "p"], {"p"}, {"a": 4.0, "p": 4.0}),
    # student rank 5 > max rank 4 (window 2..4 in this test): below the window
    "q_below": (["a", "b", "c", "d", "p"], {"p"}, {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0, "p": 9.0}),
    # the positive was never retrieved: student_missed (even though the teacher would love it)
    "q_missed": (["a", "b"], {"p"}, {"a": 0.0, "b": 1.0, "p": 9.0}),
    # two positives: the first retrieved is at rank 2; the teacher prefers the second (rank 4): KEPT
    "q_two": (["a", "p1", "b", "p2"], {"p1", "p2"}, {"a": 3.0, "p1": 2.0, "b": 1.0, "p2": 8.0}),
}


@pytest.fixture
def inputs(tmp_path):
    run, qrels, groups = [], [], []
    for qid, (ranking, positives, scores) in CASES.items():
        for r, pid in enumerate(ranking, 1):
            run.append((qid, pid, r, float(10 - r)))
        for pid in sorted(positives):
            qrels.append((qid, pid, 1))
        negs = [passage(p, f"text {p}", "", scores[p]) for p in ranking if p not in positives]
        pos = [passage(p, f"text {p}", "", scores[p]) for p in sorted(positives)]
        groups.append((qid, f"query {qid}", pos, negs))
    qrels.append(("q_keep", "judged_zero", 0))  # relevance 0: not a positive
    return {
        "run": str(table(tmp_path / "run", RUN_SCHEMA, run)),
        "qrels": str(table(tmp_path / "qrels", QRELS_SCHEMA, qrels)),
        "groups": str(table(tmp_path / "groups", GROUPS_SCHEMA, groups)),
        "output": str(tmp_path / "out"),
    }


def cfg(inputs, *extra):
    return load_config(SelectConfig, None, [f"{k}={v}" for k, v in inputs.items()] + list(extra))


def test_keeps_teacher_right_student_nearly_right(inputs):
    select(cfg(inputs, "student_max_rank=4", "num_negatives=2"))
    kept = read_table(inputs["output"]).to_pylist()
    assert [g["qid"] for g in kept] == ["q_keep", "q_two"]
    keep = kept[0]
    # The hardest negatives in retrieval order (a, b of a, b, c, d), with their teacher scores.
    assert [(n["pid"], n["score"]) for n in keep["negatives"]] == [("a", 2.0), ("b", 1.0)]
    assert [(p["pid"], p["score"]) for p in keep["positives"]] == [("p", 5.0)]
    assert keep["query"] == "query q_keep"
    counts = read_manifest(inputs["output"])["counts"]
    assert counts == {
        "queries_in_run": 7, "groups": 7, "kept": 2, "not_in_run": 0, "student_top": 1,
        "student_below_window": 1, "student_missed": 1, "teacher_wrong": 2, "short_groups": 0,
    }  # fmt: skip


def test_prod_window_and_teacher_rank(inputs):
    # PROD's 2..15 window takes q_below in too; a teacher rank of 2 is allowed with teacher_max_rank=2.
    select(cfg(inputs, "teacher_max_rank=2"))
    assert [g["qid"] for g in read_table(inputs["output"]).to_pylist()] == ["q_keep", "q_twrong", "q_tie", "q_below", "q_two"]


def test_missing_teacher_score_names_query_and_passage(inputs, tmp_path):
    rows = [("q_keep", "query", [passage("p", "t", "", 1.0)], [passage("a", "t", "", None)])]
    inputs["groups"] = str(table(tmp_path / "unscored", GROUPS_SCHEMA, rows))
    with pytest.raises(InputError, match="q_keep.*negative 'a' has no teacher score"):
        select(cfg(inputs))


def test_bad_window_fails_before_any_work(inputs):
    with pytest.raises(ConfigError, match="student_min_rank <= student_max_rank"):
        cfg(inputs, "student_min_rank=5", "student_max_rank=3")
