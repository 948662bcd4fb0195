"""layer_distill (LEAD): hand-computed value and λ, mappings, redraws, frozen vs joint teacher."""

from __future__ import annotations

import math

import pytest
import torch

from densekit.errors import ConfigError
from densekit.losses import build_objective, layer_distill, layer_pairs
from densekit.losses.layers import LayerDistill

# By hand (see test_distill): NLL(softmax(t), pos) = 0.8235753653331325, NLL(softmax(s), pos) =
# 0.9359873742761626, KL(softmax(t) ‖ softmax(s)) = 0.036650876190834736.
NLL_T, NLL_S, KL_TS = 0.8235753653331325, 0.9359873742761626, 0.036650876190834736


def test_layer_distill_by_hand(st):
    s, t = st
    student = torch.stack([s, s])  # [Ls=2, B, C]
    teacher = torch.stack([t, s])  # teacher layer 1 equals the student: KL 0
    loss, lam = layer_distill(
        student,
        teacher,
        torch.tensor([0, 0]),
        [(0, 0), (1, 1)],
        temperature=1.0,
        layer_temperature=10.0,
    )
    lam0 = math.exp(-NLL_T / 10) / (math.exp(-NLL_T / 10) + math.exp(-NLL_S / 10))
    assert lam[0].item() == pytest.approx(lam0, rel=1e-5) and lam0 == pytest.approx(
        0.5028102706304116
    )
    assert loss.item() == pytest.approx(lam0 * KL_TS, rel=1e-5)
    # without re-weighting every pair weighs 1
    loss1, lam1 = layer_distill(
        student, teacher, torch.tensor([0, 0]), [(0, 0), (1, 1)], reweight=False
    )
    assert lam1.tolist() == [1.0, 1.0] and loss1.item() == pytest.approx(KL_TS, rel=1e-5)
    same, _ = layer_distill(teacher, teacher, torch.tensor([0, 0]), [(0, 0), (1, 1)])
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_lambda_is_detached_and_teacher_frozen(st, helpers):
    s, t = st
    s_l = torch.stack([s, s]).requires_grad_()
    t_l = torch.stack([t, s]).requires_grad_()
    loss = LayerDistill(mapping="list", student_layers=[0, 1], teacher_layers=[0, 1])
    value = loss(
        helpers.group_output(s, layer_scores=s_l),
        None,
        teacher=helpers.group_output(t, layer_scores=t_l),
    )
    value.backward()
    assert s_l.grad.abs().sum() > 0 and t_l.grad is None
    assert not loss.last_weights.requires_grad


def test_joint_teacher_adds_nll_and_reverse_kl_and_trains_the_teacher(st, helpers):
    s, t = st
    objective = build_objective(
        {
            "layer_distill": {
                "params": {
                    "mapping": "list",
                    "student_layers": [0, 1],
                    "teacher_layers": [0, 1],
                    "joint": True,
                }
            }
        }
    )
    assert objective.teacher_trainable
    s_l, t_l = torch.stack([s, s]), torch.stack([t, s]).requires_grad_()
    t_final = t.clone().requires_grad_()
    value = objective(
        helpers.group_output(s, layer_scores=s_l),
        None,
        teacher=helpers.group_output(t_final, layer_scores=t_l),
    )
    lam0 = math.exp(-NLL_T / 10) / (math.exp(-NLL_T / 10) + math.exp(-NLL_S / 10))
    # + NLL(teacher final) + KL(softmax(s) ‖ softmax(t)); the reverse KL by hand = 0.045013322375890785
    expected = lam0 * KL_TS + NLL_T + 0.045013322375890785
    assert expected == pytest.approx(0.8870171246853786)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert t_final.grad.abs().sum() > 0 and t_l.grad.abs().sum() > 0


def test_mappings():
    assert layer_pairs("last", 6, 12, 5) == [
        (1, 7),
        (2, 8),
        (3, 9),
        (4, 10),
        (5, 11),
    ]  # LEAD's last
    assert layer_pairs("skip", 6, 12, 5) == [(1, 0), (2, 2), (3, 4), (4, 6), (5, 8)]  # LEAD's skip
    g = torch.Generator().manual_seed(0)
    pairs = layer_pairs("random", 6, 12, 3, generator=g)
    s, t = zip(*pairs)
    assert list(s) == sorted(s) and list(t) == sorted(t) and len(set(s)) == 3 and max(t) < 12
    with pytest.raises(ValueError, match="num_layers 7 is more than the student"):
        layer_pairs("last", 6, 12, 7)
    with pytest.raises(ConfigError, match="unknown mapping 'randm'"):
        build_objective({"layer_distill": {"params": {"mapping": "randm", "num_layers": 2}}})
    with pytest.raises(ConfigError, match="needs num_layers"):
        build_objective({"layer_distill": {"params": {"mapping": "random"}}})


def test_random_mapping_is_redrawn_every_n_calls_and_reproducible(st, helpers):
    s, _ = st
    scores = torch.randn(6, 2, 3), torch.randn(12, 2, 3)

    def run(loss, n):
        seen = []
        for _ in range(n):
            loss(
                helpers.group_output(s, layer_scores=scores[0]),
                None,
                teacher=helpers.group_output(s, layer_scores=scores[1]),
            )
            seen.append(tuple(loss.pairs))
        return seen

    a = run(LayerDistill(mapping="random", num_layers=3, redraw_every=2, seed=7), 8)
    assert a[0] == a[1] and a[2] == a[3] and len(set(a)) > 1  # new pairs only every 2 calls
    assert a == run(
        LayerDistill(mapping="random", num_layers=3, redraw_every=2, seed=7), 8
    )  # every rank agrees
    assert a != run(LayerDistill(mapping="random", num_layers=3, redraw_every=2, seed=8), 8)


def test_layer_scores_required(st, helpers):
    s, t = st
    with pytest.raises(ValueError, match="the student output has no layer_scores"):
        LayerDistill(mapping="last", num_layers=1)(
            helpers.group_output(s), None, teacher=helpers.group_output(t)
        )
    with pytest.raises(
        ValueError,
        match=r"layer_distill: teacher_layers must have shape \[\*, 2, 3\], got \[2, 3, 3\]",
    ):
        layer_distill(
            torch.zeros(2, 2, 3), torch.zeros(2, 3, 3), torch.zeros(2, dtype=torch.long), [(0, 0)]
        )
