"""margin_mse, kl_distill, lwf, embedding_mse, nll and contrastive against numbers worked out by
hand on 2x3 scores (s = [[1, 0, -1], [.5, 1.5, 0]], t = [[2, 0, 0], [0, 1, -1]], positive first)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densekit.losses import build_objective, embedding_mse, info_nce, kl_distill, margin_mse
from densekit.losses.distill import EmbeddingMSE, KLDistill, LwF, MarginMSE


def test_margin_mse_by_hand(st):
    s, t = st
    # margins s: [1, 2] and [-1, .5]; t: [2, 2] and [-1, 1] -> squared errors 1, 0, 0, .25
    assert margin_mse(s, t).item() == pytest.approx(0.3125)
    assert margin_mse(s, s).item() == 0.0
    # only margins matter: shifting the teacher's scores per query changes nothing
    assert margin_mse(s, t + torch.tensor([[5.0], [-3.0]])).item() == pytest.approx(0.3125)


def test_kl_distill_by_hand_and_t2_scaling(st):
    s, t = st
    # Σ_q Σ_c p_t log(p_t/p_s) / 2, p = softmax(x / T), times T²
    assert kl_distill(s, t, 1.0).item() == pytest.approx(0.036650876190834736, rel=1e-5)
    assert kl_distill(s, t, 2.0).item() == pytest.approx(0.05568228649468928, rel=1e-5)
    assert kl_distill(s, t, 4.0).item() == pytest.approx(0.06364479803997974, rel=1e-5)
    assert kl_distill(s, s, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_distill_with_its_own_teacher_temperature(st):
    s, t = st
    # p_s = softmax(s / 0.5), p_t = softmax(t / 2): Σ p_t log(p_t / p_s) / 2 queries, times 0.5²
    assert kl_distill(s, t, 0.5, teacher_temperature=2.0).item() == pytest.approx(0.09528384612252305, rel=1e-5)
    # dividing the teacher by T_t is rescaling its scores by T / T_t at the common T
    torch.testing.assert_close(kl_distill(s, t, 0.5, teacher_temperature=2.0), kl_distill(s, t * 0.25, 0.5))
    assert kl_distill(s, t, 0.5, teacher_temperature=None).item() == pytest.approx(kl_distill(s, t, 0.5).item())
    loss = KLDistill(temperature=0.5, teacher_temperature=2.0)
    assert loss.teacher_temperature == 2.0
    with pytest.raises(ValueError, match="teacher_temperature"):
        KLDistill(temperature=0.5, teacher_temperature=0.0)


def test_kl_distill_at_t1_equals_f_kl_div(st):
    s, t = st
    expected = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    torch.testing.assert_close(kl_distill(s, t, 1.0), expected)


def test_kl_with_dropped_columns_is_kl_over_the_rest(st):
    s, t = st
    keep = torch.tensor([[True, True, False], [True, True, True]])
    sub = (kl_distill(s[:1, :2], t[:1, :2]) + kl_distill(s[1:], t[1:])) / 2
    torch.testing.assert_close(kl_distill(s, t, 1.0, keep), sub)


def test_embedding_mse_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    assert embedding_mse(a, b).item() == pytest.approx(7 / 6)
    assert embedding_mse(a, a).item() == 0.0


def test_nll_and_info_nce_by_hand(st):
    s, _ = st
    target = torch.zeros(2, dtype=torch.long)
    assert info_nce(s, target).item() == pytest.approx(0.9359873742761626, rel=1e-5)
    assert info_nce(s, target, temperature=0.5).item() == pytest.approx(
        1.1563888240280926, rel=1e-5
    )


def test_modules_read_offline_or_online_teacher(st, helpers):
    s, t = st
    student = helpers.group_output(s.clone().requires_grad_())
    batch = helpers.batch_with_teacher_scores(t)
    assert MarginMSE()(student, batch).item() == pytest.approx(0.3125)
    online = helpers.group_output(t)
    assert KLDistill(temperature=2.0)(student, batch, teacher=online).item() == pytest.approx(
        0.05568228649468928, rel=1e-5
    )
    batch.teacher_scores = None
    with pytest.raises(ValueError, match="kl_distill needs teacher scores"):
        KLDistill()(student, batch)


def test_gradients_reach_the_student_not_a_frozen_teacher(st, helpers):
    s, t = st
    for loss in (MarginMSE(), KLDistill(temperature=4.0)):
        s_ = s.clone().requires_grad_()
        t_ = t.clone().requires_grad_()
        loss(helpers.group_output(s_), None, teacher=helpers.group_output(t_)).backward()
        assert s_.grad is not None and s_.grad.abs().sum() > 0, loss.name
        assert t_.grad is None, loss.name
    e_s, e_t = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    from densekit.models.output import ModelOutput

    EmbeddingMSE()(ModelOutput(query_emb=e_s), None, teacher=ModelOutput(query_emb=e_t)).backward()
    assert e_s.grad.abs().sum() > 0 and e_t.grad is None


def test_lwf_uses_the_reference_and_is_zero_at_the_start(st, helpers):
    s, t = st
    s_ = s.clone().requires_grad_()
    ref = helpers.group_output(s.clone().requires_grad_())
    loss = LwF(temperature=4.0)
    assert loss(helpers.group_output(s_), None, reference=ref).item() == pytest.approx(
        0.0, abs=1e-7
    )
    value = loss(helpers.group_output(s_), None, reference=helpers.group_output(t))
    assert value.item() == pytest.approx(0.06364479803997974, rel=1e-5)
    value.backward()
    assert s_.grad.abs().sum() > 0 and ref.scores.grad is None
    with pytest.raises(ValueError, match="lwf needs the frozen copy"):
        loss(helpers.group_output(s_), None)


def test_prod_stage_loss(st, helpers):
    """PROD: 0.1·NLL + 0.9·kd(s, t) + 1.0·kd(s, s_orig), T = 4."""
    s, t = st
    objective = build_objective(
        {
            "nll": {"weight": 0.1},
            "kl_distill": {"weight": 0.9, "params": {"temperature": 4}},
            "lwf": {"weight": 1.0, "params": {"temperature": 4}},
        }
    )
    assert objective.needs_teacher and objective.needs_reference and not objective.teacher_trainable
    ref = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    value = objective(
        helpers.group_output(s),
        None,
        teacher=helpers.group_output(t),
        reference=helpers.group_output(ref),
    )
    kd_ref = kl_distill(
        s, ref, 4.0
    ).item()  # the reference term, checked by the functions' own hand tests
    expected = 0.1 * 0.9359873742761626 + 0.9 * 0.06364479803997974 + kd_ref
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert set(objective.last_terms) == {"nll", "kl_distill", "lwf"}


def test_wrong_shapes_name_the_tensor(st, helpers):
    s, t = st
    with pytest.raises(
        ValueError, match=r"margin_mse: teacher_scores must have shape \[2, 3\], got \[2, 4\]"
    ):
        margin_mse(s, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"kl: teacher_scores must have shape \[2, 3\], got \[3\]"):
        kl_distill(s, torch.zeros(3))
    with pytest.raises(
        ValueError, match=r"embedding_mse: teacher_emb must have shape \[2, 3\], got \[2, 5\]"
    ):
        embedding_mse(s, torch.zeros(2, 5))
    with pytest.raises(
        ValueError, match="kl_distill: teacher scores .* do not match student scores"
    ):
        KLDistill()(helpers.group_output(s), None, teacher=helpers.group_output(torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="margin_mse: needs a positive and at least one negative"):
        margin_mse(s[:, :1], t[:, :1])
