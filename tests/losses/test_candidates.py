"""Candidate sets: columns, targets and relevance of the global and group modes."""

from __future__ import annotations

import torch

from densekit.candidates import all_gather, global_candidates, group_candidates, pid_hash, to_group


def _ids(*pids):
    return torch.tensor([pid_hash(p) for p in pids])


def test_global_candidates_mark_every_relevant_copy():
    # q0: [p0, p1], q1: [p1, p0]: q0's positive p0 is q1's negative, and vice versa
    passages = _ids("p0", "p1", "p1", "p0")
    positives = _ids("p0", "p1").view(2, 1)
    cands, ids = global_candidates(
        passages, positives, torch.ones(2, 1, dtype=torch.bool), group_size=2
    )
    assert cands.target.tolist() == [0, 2] and cands.group_index.tolist() == [[0, 1], [2, 3]]
    assert cands.relevant.tolist() == [[True, False, False, True], [False, True, True, False]]
    assert torch.equal(ids, passages)  # one process: nothing to gather
    scores = torch.arange(8.0).view(2, 4)
    g_scores, g_cands = to_group(scores, cands)
    assert g_scores.tolist() == [[0.0, 1.0], [6.0, 7.0]] and g_cands.relevant.tolist() == [
        [True, False],
        [True, False],
    ]
    layered, _ = to_group(torch.stack([scores, -scores]), cands)  # [L, B, C] -> [L, B, G]
    assert layered[1].tolist() == [[-0.0, -1.0], [-6.0, -7.0]]


def test_group_candidates_check_every_positive():
    passages = _ids("a", "n1", "b", "b2")
    positives = torch.stack(
        [_ids("a", "x"), _ids("b", "b2")]
    )  # q1 has two positives, both in its group
    mask = torch.tensor([[True, False], [True, True]])
    cands = group_candidates(passages, positives, mask, group_size=2)
    assert cands.relevant.tolist() == [[True, False], [True, True]] and cands.target.tolist() == [
        0,
        0,
    ]


def test_all_gather_without_a_process_group_is_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather(x) is x
