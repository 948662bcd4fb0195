"""Fixtures for loss tests: the 2x3 score matrices every hand computation uses, and helpers that
wrap tensors as ModelOutputs and TrainBatches (test modules cannot import conftest)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from densekit.candidates import Candidates
from densekit.data.collate import TrainBatch
from densekit.models.output import ModelOutput


def group_output(
    scores, target=None, relevant=None, layer_scores=None, query_emb=None
) -> ModelOutput:
    """A ModelOutput over per-query groups [B, G] (positive in column `target`, default 0)."""
    B, G = scores.shape
    target = torch.zeros(B, dtype=torch.long) if target is None else torch.as_tensor(target)
    if relevant is None:
        relevant = torch.zeros(B, G, dtype=torch.bool)
        relevant[torch.arange(B), target] = True
    cands = Candidates("group", target, relevant, torch.ones(B, G, dtype=torch.bool))
    return ModelOutput(
        scores=scores,
        candidates=cands,
        layer_scores=layer_scores,
        query_emb=query_emb,
        layer_ids=list(range(0 if layer_scores is None else layer_scores.shape[0])),
    )


def global_output(scores, target, relevant, group_size, layer_scores=None) -> ModelOutput:
    B, C = scores.shape
    gi = torch.as_tensor(target).unsqueeze(1) + torch.arange(group_size)
    cands = Candidates(
        "global",
        torch.as_tensor(target),
        relevant,
        torch.ones(B, C, dtype=torch.bool),
        group_index=gi,
    )
    return ModelOutput(scores=scores, candidates=cands, layer_scores=layer_scores)


def batch_with_teacher_scores(teacher_scores) -> TrainBatch:
    B, G = teacher_scores.shape
    pids = [f"q{i}-{g}" for i in range(B) for g in range(G)]
    from densekit.candidates import pid_hash

    return TrainBatch(
        qids=[f"q{i}" for i in range(B)], query_texts=["q"] * B, pids=pids, passage_texts=["p"] * (B * G),
        passage_titles=[""] * (B * G), group_size=G, positive_pids=[[f"q{i}-0"] for i in range(B)],
        passage_ids=torch.tensor([pid_hash(p) for p in pids]), positive_ids=torch.tensor([[pid_hash(f"q{i}-0")] for i in range(B)]),
        positive_mask=torch.ones(B, 1, dtype=torch.bool), teacher_scores=teacher_scores,
    )  # fmt: skip


@pytest.fixture
def st():
    """s (student) and t (teacher) scores, 2 queries x 3 candidates, positive in column 0."""
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    return s, t


@pytest.fixture
def helpers():
    return SimpleNamespace(
        group_output=group_output,
        global_output=global_output,
        batch_with_teacher_scores=batch_with_teacher_scores,
    )
