"""One training step the way the trainer runs it, on real tiny models: collator -> models ->
objective -> backward. PROD's stage (DE student, CE teacher, LwF) and LEAD (DE student, ColBERT
teacher, per-layer) with the modes chosen by Objective.candidates."""

from __future__ import annotations

import pytest
import torch

from densekit.data.collate import TrainCollator
from densekit.data.records import passage
from densekit.losses import build_objective
from densekit.models import ModelSpec, build_model, frozen_copy
from densekit_testdata import PASSAGES

TEXTS = PASSAGES[:4] + PASSAGES[-1:]


def groups(n_neg=2):
    out = []
    for i in range(3):
        negs = [(i + 1 + k) % len(TEXTS) for k in range(n_neg)]
        out.append(
            {
                "qid": f"q{i}",
                "query": TEXTS[i][:20],
                "positives": [passage(f"p{i}", TEXTS[i])],
                "negatives": [passage(f"p{j}", TEXTS[j]) for j in negs],
            }
        )
    return out


def test_prod_stage_step(tiny_model_dir):
    student = build_model(ModelSpec(pooling="cls"), tiny_model_dir).eval()  # eval: no dropout noise
    teacher = (
        build_model(ModelSpec(kind="cross_encoder"), tiny_model_dir).eval().requires_grad_(False)
    )
    objective = build_objective(
        {
            "nll": {"weight": 0.1},
            "kl_distill": {"weight": 0.9, "params": {"temperature": 4}},
            "lwf": {"params": {"temperature": 4}},
        }
    )
    reference = frozen_copy(student)
    s_mode, t_mode = objective.candidates(student.kind, teacher.kind)
    assert (s_mode, t_mode) == ("global", "group")
    collate = TrainCollator(
        3, tokenizations=[student.tokenization, teacher.tokenization, reference.tokenization]
    )
    batch = collate(groups())
    assert len(batch.inputs) == 2  # the reference shares the student's tokenisation
    with torch.no_grad():
        t_out = teacher(batch, candidates=t_mode)
        r_out = reference(batch, candidates=s_mode)
    s_out = student(batch, candidates=s_mode)
    loss = objective(s_out, batch, teacher=t_out, reference=r_out)
    assert objective.last_terms["lwf"].item() == pytest.approx(
        0.0, abs=1e-6
    )  # the copy is the student, for now
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in reference.parameters())
    before = [p.clone() for p in reference.parameters()]
    torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=1.0).step()
    assert all(
        torch.equal(a, b) for a, b in zip(before, reference.parameters())
    )  # the copy stays frozen
    with torch.no_grad():
        moved = student(batch, candidates=s_mode).scores
    # The student moved away from its stage-start self. (Scores of the tiny CLS model sit near 32,
    # so allclose's relative tolerance would hide the move; compare against float noise instead.)
    assert (moved - r_out.scores).abs().max() > 1e-5


def test_lead_step_colbert_teacher(tiny_model_dir):
    student = student_of(tiny_model_dir)
    teacher = build_model(ModelSpec(kind="colbert", colbert_dim=8), tiny_model_dir).eval()
    objective = build_objective(
        {
            "nll": {},
            "kl_distill": {},
            "layer_distill": {"params": {"mapping": "random", "num_layers": 1}},
        }
    )
    assert objective.needs_layers and not objective.teacher_trainable
    s_mode, t_mode = objective.candidates(student.kind, teacher.kind)
    assert (s_mode, t_mode) == ("global", "global")
    batch = TrainCollator(2, tokenizations=[student.tokenization, teacher.tokenization])(groups(1))
    t_out = teacher(batch, candidates=t_mode, output_layers=True)
    s_out = student(batch, candidates=s_mode, output_layers=True)
    assert s_out.layer_scores.shape == (1, 3, 6) and t_out.layer_scores.shape == (2, 3, 6)
    objective(s_out, batch, teacher=t_out).backward()
    assert all(p.grad is None for p in teacher.parameters())  # frozen: teacher terms are detached
    assert any(p.grad is not None for p in student.parameters())


def student_of(path):
    from densekit.models.student import student_from_teacher

    return student_from_teacher(build_model(ModelSpec(), path), layers=[1]).train()
