"""star_pairwise, adore_lambda and contrastive (global candidates, relevant pairs masked) by hand,
plus ADORE's retrieved candidate lists."""

from __future__ import annotations

import math

import pytest
import torch

from densekit.candidates import retrieved_candidates, score_retrieved
from densekit.errors import ConfigError
from densekit.losses import adore_lambda, build_objective, star_pairwise
from densekit.losses.contrastive import Contrastive
from densekit.losses.ranking import AdoreLambda, StarPairwise
from densekit.models.output import ModelOutput


def sp(x):  # softplus, log(1 + e^x)
    return math.log1p(math.exp(x))


def test_star_pairwise_by_hand(st):
    s, _ = st
    target = torch.tensor([0, 1])
    relevant = torch.tensor(
        [[True, False, True], [False, True, False]]
    )  # q0's col 2 is relevant: masked
    # pairs: q0 vs col1: sp(0-1); q1 vs col0: sp(.5-1.5); q1 vs col2: sp(0-1.5)
    expected = (sp(-1) + sp(-1) + sp(-1.5)) / 3
    assert star_pairwise(s, target, relevant).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.2759788843397327)


def test_star_module_needs_global_candidates(st, helpers):
    s, _ = st
    relevant = torch.tensor([[True, False, True], [False, True, False]])
    out = helpers.global_output(
        s.clone().requires_grad_(), torch.tensor([0, 1]), relevant, group_size=1
    )
    loss = StarPairwise()(out, None)
    assert loss.item() == pytest.approx(0.2759788843397327, rel=1e-5)
    loss.backward()
    assert out.scores.grad[0, 2] == 0  # the masked relevant pair gets no gradient
    with pytest.raises(
        ValueError,
        match="star_pairwise needs global candidates, but the scores are over group candidates",
    ):
        StarPairwise()(helpers.group_output(s), None)


def test_adore_lambda_by_hand(st):
    s, _ = st
    relevant = torch.tensor([[False, True, False], [True, False, True]])
    ranks = torch.tensor([[1, 2, 3], [1, 2, 3]])
    # cut 2: 1/r = [1, .5, 0]. q0: pairs (1,0) C=sp(1) w=.5, (1,2) C=sp(-1) w=.5 -> / 2 pairs
    # q1: pairs (0,1) C=sp(1) w=.5, (2,1) C=sp(1.5) w=.5 -> / 2 pairs
    expected = ((0.5 * sp(1) + 0.5 * sp(-1)) / 2 + (0.5 * sp(1) + 0.5 * sp(1.5)) / 2) / 2
    assert adore_lambda(s, relevant, ranks, metric_cut=2).item() == pytest.approx(
        expected, rel=1e-5
    )
    assert expected == pytest.approx(0.5801497925671777)
    # with metric_cut=1 only rank 1 keeps 1/r: q0 (1,2) and q1 (2,1) pairs weigh 0
    expected1 = ((1.0 * sp(1)) / 2 + (1.0 * sp(1)) / 2) / 2
    assert adore_lambda(s, relevant, ranks, metric_cut=1).item() == pytest.approx(
        expected1, rel=1e-5
    )


def test_adore_needs_metric_cut():
    with pytest.raises(
        ConfigError, match="missing required parameter.*metric_cut.*zeroes every weight"
    ):
        build_objective({"adore_lambda": {"weight": 1.0}})
    with pytest.raises(ValueError, match="metric_cut must be a positive"):
        adore_lambda(
            torch.zeros(1, 2),
            torch.tensor([[True, False]]),
            torch.tensor([[1, 2]]),
            metric_cut=None,
        )


def test_retrieved_candidates_append_missing_positives():
    pids, cands = retrieved_candidates([["a", "b", "c"], ["d", "e", "f"]], [["c", "x"], ["y"]])
    assert pids == [["a", "b", "c", "x"], ["d", "e", "f", "y"]]
    assert cands.relevant.tolist() == [[False, False, True, True], [False, False, False, True]]
    assert cands.ranks[0].tolist() == [1, 2, 3, 4] and cands.target.tolist() == [2, 3]
    # DRhard's code appends only when nothing relevant was retrieved
    pids, cands = retrieved_candidates(
        [["a", "b", "c"], ["d"]], [["c", "x"], ["y"]], append="if_none"
    )
    assert pids == [["a", "b", "c"], ["d", "y"]]
    assert cands.valid.tolist() == [[True, True, True], [True, True, False]]


def test_adore_module_on_retrieved_scores():
    _, cands = retrieved_candidates([["a", "b"], ["d", "e", "f"]], [["b"], ["d"]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    docs = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]], [[0.0, 2.0], [1.0, 1.0], [0.0, 0.0]]]
    )  # q0's 3rd is padding
    scores = score_retrieved(q, docs, cands)
    assert scores.tolist() == [[1.0, 0.0, 0.0], [2.0, 1.0, 0.0]]
    out = ModelOutput(scores=scores, candidates=cands, query_emb=q)
    loss = AdoreLambda(metric_cut=200)(out, None)
    # q0: pair (b, a): C = sp(-(0-1)) = sp(1), w = |1/2 - 1| = .5 (padding ignored)
    # q1: pairs (d, e): sp(-1), w = .5; (d, f): sp(-2), w = 1 - 1/3
    expected = (0.5 * sp(1) + (0.5 * sp(-1) + (2 / 3) * sp(-2)) / 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert q.grad.abs().sum() > 0


def test_contrastive_on_retrieved_scores_by_hand():
    """The labels-only twin of query-encoder distillation: InfoNCE over a fixed index's top k,
    padding left out, a second retrieved positive masked, the best-ranked positive the target."""
    _, cands = retrieved_candidates([["a", "b", "c"], ["d", "e"]], [["b", "c"], ["x"]])
    # q0: [a, b, c], b and c relevant, target b; q1: [d, e, x(appended)], target x
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    docs = torch.tensor([[[0.5, 0.0], [1.0, 0.0], [0.2, 0.0]], [[0.0, 0.3], [0.0, -0.1], [0.0, 0.9]]])
    scores = score_retrieved(q, docs, cands)
    out = ModelOutput(scores=scores, candidates=cands, query_emb=q)
    T = 0.1
    row0 = math.log(math.exp(0.5 / T) + math.exp(1.0 / T)) - 1.0 / T  # c dropped
    row1 = math.log(math.exp(0.3 / T) + math.exp(-0.1 / T) + math.exp(0.9 / T)) - 0.9 / T
    assert Contrastive(temperature=T)(out, None).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_contrastive_masks_other_relevant_passages(st, helpers):
    s, _ = st
    relevant = torch.tensor([[True, False, True], [False, False, False]])
    relevant[1, 0] = True
    out = helpers.global_output(s, torch.tensor([0, 0]), relevant, group_size=1)
    # q0 drops column 2 (relevant, not its positive); T = .5
    row0 = math.log(math.exp(2) + math.exp(0)) - 2
    row1 = math.log(math.exp(1) + math.exp(3) + math.exp(0)) - 1
    assert Contrastive(temperature=0.5)(out, None).item() == pytest.approx(
        (row0 + row1) / 2, rel=1e-5
    )
    assert (row0 + row1) / 2 == pytest.approx(1.1483870152996292)
    unmasked = Contrastive(temperature=0.5, mask_relevant=False)(out, None).item()
    assert unmasked == pytest.approx(1.1563888240280926, rel=1e-5)


def test_adore_forward_retrieves_from_a_fixed_index(tiny_model_dir):
    """BiEncoder.forward(candidates="retrieved"): scores are q·d of the retrieved documents, and only
    the query side gets gradients (the index is fixed)."""
    from densekit.candidates import matrix_retriever
    from densekit.data.collate import TrainCollator
    from densekit.models import ModelSpec, build_model

    model = build_model(ModelSpec(pooling="mean"), tiny_model_dir)
    docs = [
        "dense retrieval trains small query and passage encoders",
        "the quick brown fox",
        "hard negatives are mined",
        "a lazy dog",
    ]
    with torch.no_grad():
        doc_emb = model.encode_passages(**model.tokenize_passages(docs))
    retriever = matrix_retriever(doc_emb, ["d0", "d1", "d2", "d3"], k=2)
    rows = [
        {"qid": "a", "text": "dense retrieval", "positives": [{"pid": "d3"}]},
        {"qid": "b", "text": "the fox", "positives": [{"pid": "d1"}]},
    ]
    batch = TrainCollator(0)(rows)
    out = model(batch, candidates="retrieved", retriever=retriever)
    assert out.mode == "retrieved" and out.scores.shape[0] == 2
    with torch.no_grad():
        q = model.encode_queries(**model.tokenize_queries(batch.query_texts))
        full = q @ doc_emb.T
    for i in range(2):
        top2 = full[i].topk(2).values
        torch.testing.assert_close(out.scores[i, :2].detach(), top2)
    assert out.candidates.relevant.any(1).all()  # positives retrieved or appended
    loss = build_objective({"adore_lambda": {"params": {"metric_cut": 2}}})(out, batch)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_star_and_adore_temperature_divides_the_scores(st, helpers):
    """temperature T: the same loss as on scores / T (by hand above at T = 1)."""
    s, _ = st
    relevant = torch.tensor([[True, False, True], [False, True, False]])
    out = helpers.global_output(s.clone(), torch.tensor([0, 1]), relevant, group_size=1)
    t = 0.25
    expected = (sp(-1 / t) + sp(-1 / t) + sp(-1.5 / t)) / 3
    assert StarPairwise(temperature=t)(out, None).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0"):
        StarPairwise(temperature=0)
    with pytest.raises(ValueError, match="temperature must be a positive number, got -1"):
        AdoreLambda(metric_cut=2, temperature=-1)
