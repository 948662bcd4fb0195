"""TrainCollator: groups with the positive first, per-epoch seeded negatives, descend order,
teacher scores, clear errors, pre-tokenised inputs per model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from densekit.candidates import pid_hash
from densekit.data.collate import TrainCollator
from densekit.data.records import passage
from densekit.errors import InputError
from densekit.models import ModelSpec, build_model


def group(qid: str, n_neg: int = 10, scores: bool = True) -> dict:
    return {
        "qid": qid,
        "query": f"query {qid}",
        "positives": [
            passage(f"{qid}-pos", "positive text", "t", 9.0 if scores else None),
            passage(f"{qid}-pos2", "other positive", "", 8.0),
        ],
        "negatives": [
            passage(f"{qid}-n{k}", f"negative {k}", "", float(-k) if scores else None)
            for k in range(n_neg)
        ],
    }


def test_groups_are_positive_first_and_descend_is_stored_order():
    batch = TrainCollator(4, negatives="descend", teacher_scores=True)([group("a"), group("b")])
    assert len(batch) == 2 and batch.group_size == 4
    assert batch.pids == ["a-pos", "a-n0", "a-n1", "a-n2", "b-pos", "b-n0", "b-n1", "b-n2"]
    assert batch.teacher_scores.tolist() == [[9.0, 0.0, -1.0, -2.0]] * 2
    assert batch.passage_titles[:2] == ["t", ""]
    assert batch.positive_pids == [["a-pos", "a-pos2"], ["b-pos", "b-pos2"]]
    assert batch.passage_ids[0].item() == pid_hash("a-pos")
    assert batch.positive_ids.shape == (2, 2) and batch.positive_mask.all()


def test_random_negatives_are_seeded_per_query_and_epoch():
    c = TrainCollator(4, negatives="random", seed=3)
    first = c([group("a"), group("b")]).pids
    assert c([group("a"), group("b")]).pids == first  # same epoch, same draw
    reordered = c([group("b"), group("a")]).pids
    assert reordered[4:] == first[:4] and reordered[:4] == first[4:]  # independent of batch order
    c.set_epoch(1)
    assert c([group("a"), group("b")]).pids != first  # re-drawn each epoch
    assert len(set(first[1:4])) == 3  # without replacement
    assert TrainCollator(4, seed=4)([group("a"), group("b")]).pids != first


def test_random_positive_is_drawn_from_all_positives():
    c = TrainCollator(1, positive="random")
    seen = set()
    for epoch in range(20):
        c.set_epoch(epoch)
        seen.add(c([group("a")]).pids[0])
    assert seen == {"a-pos", "a-pos2"}


def test_short_groups_repeat_negatives():
    c = TrainCollator(5, negatives="descend")
    batch = c([group("a", n_neg=2)])
    assert batch.pids == ["a-pos", "a-n0", "a-n1", "a-n0", "a-n1"] and c.short_groups == 1


def test_errors_name_query_and_passage():
    with pytest.raises(InputError, match="qid a, pid a-pos: no teacher score"):
        TrainCollator(3, teacher_scores=True, source="groups/")([group("a", scores=False)])
    with pytest.raises(InputError, match="groups/: qid x: no positives"):
        TrainCollator(3, source="groups/")(
            [{"qid": "x", "query": "q", "positives": [], "negatives": []}]
        )
    with pytest.raises(InputError, match="qid y: no negatives, but group_size 3 needs 2"):
        TrainCollator(3)([{**group("y"), "negatives": []}])


def test_query_only_batches_and_table_formats():
    rows = [{"qid": "1", "text": "first query"}, {"qid": "2", "text": "second query"}]
    batch = TrainCollator(0)(pd.DataFrame(rows))
    assert (
        batch.query_texts == ["first query", "second query"]
        and batch.pids == []
        and batch.group_size == 0
    )
    cols = {
        k: [g[k] for g in (group("a"), group("b"))]
        for k in ("qid", "query", "positives", "negatives")
    }
    assert TrainCollator(2, negatives="descend")(cols).pids == ["a-pos", "a-n0", "b-pos", "b-n0"]


def test_pre_tokenised_inputs_are_used(arch_dirs):
    student = build_model(ModelSpec(), arch_dirs["bert"]).eval()
    teacher = build_model(ModelSpec(kind="cross_encoder"), arch_dirs["bert"]).eval()
    batch = TrainCollator(3, tokenizations=[student.tokenization, teacher.tokenization])(
        [group("a"), group("b")]
    )
    assert set(batch.inputs) == {student.tokenization.key, teacher.tokenization.key}
    assert set(batch.inputs[teacher.tokenization.key]) == {"pairs"}
    torch.testing.assert_close(
        batch.inputs[student.tokenization.key]["queries"]["input_ids"],
        student.tokenize_queries(batch.query_texts)["input_ids"],
    )
    # a pre-tokenised entry is what the model reads: corrupt it and the output changes
    with torch.no_grad():
        before = student(batch).scores
        batch.inputs[student.tokenization.key]["queries"]["input_ids"][:, 1] = 5
        assert not torch.equal(student(batch).scores, before)
