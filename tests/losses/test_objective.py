"""build_objective: names and params checked at construction, weighted sum, candidate modes."""

from __future__ import annotations

import pytest
import torch

from densekit.errors import ConfigError
from densekit.losses import LOSSES, build_objective, info_nce, margin_mse


def test_every_documented_loss_is_registered():
    assert set(LOSSES) == {
        "contrastive", "nll", "star_pairwise", "adore_lambda", "margin_mse", "kl_distill", "embedding_mse", "lwf", "layer_distill",
    }  # fmt: skip


def test_typos_fail_at_construction():
    with pytest.raises(
        ConfigError, match="unknown parameter 'temprature'. Did you mean 'temperature'"
    ):
        build_objective({"kl_distill": {"weight": 1.0, "params": {"temprature": 2.0}}})
    with pytest.raises(ConfigError, match="unknown loss 'kl_distil'.*Did you mean 'kl_distill'"):
        build_objective({"kl_distil": {}})
    with pytest.raises(ConfigError, match="losses.nll: unknown key.*wieght"):
        build_objective({"nll": {"wieght": 2}})
    with pytest.raises(
        ConfigError, match="losses.nll.params: unknown parameter 'temperature': nll takes no parameters"
    ):
        build_objective({"nll": {"params": {"temperature": 1}}})
    with pytest.raises(ConfigError, match="temperature must be positive"):
        build_objective({"contrastive": {"params": {"temperature": 0}}})
    with pytest.raises(ConfigError, match="name at least one loss"):
        build_objective({})


def test_weighted_sum(st, helpers):
    s, t = st
    objective = build_objective({"nll": {"weight": 0.25}, "margin_mse": {"weight": 2.0}})
    value = objective(helpers.group_output(s), helpers.batch_with_teacher_scores(t))
    expected = 0.25 * info_nce(s, torch.zeros(2, dtype=torch.long)) + 2.0 * margin_mse(s, t)
    torch.testing.assert_close(value, expected)
    assert objective.last_terms["margin_mse"].item() == pytest.approx(0.3125)


def test_a_term_at_weight_0_is_off(st, helpers):
    """Not computed (margin_mse would fail without teacher scores), not logged, and what only it
    needs is not asked for; every term at weight 0 is a config error."""
    s, t = st
    objective = build_objective({"nll": {"weight": 0.5}, "margin_mse": {"weight": 0}, "layer_distill": {"weight": 0.0, "params": {"num_layers": 2}}})
    assert not objective.needs_teacher and not objective.needs_layers
    assert not objective.reads_teacher  # so an online teacher is not loaded (train/worker.py)
    assert build_objective({"nll": {}, "layer_distill": {"params": {"num_layers": 2}}}).reads_teacher
    assert not build_objective({"nll": {}, "lwf": {}}).reads_teacher  # LwF reads the student's own copy
    assert set(objective.terms) == {"nll", "margin_mse", "layer_distill"}  # kept: a checkpoint's keys
    batch = helpers.batch_with_teacher_scores(t)
    batch.teacher_scores = None  # labels only: margin_mse, if computed, would fail
    value = objective(helpers.group_output(s), batch)
    torch.testing.assert_close(value, 0.5 * info_nce(s, torch.zeros(2, dtype=torch.long)))
    assert set(objective.last_terms) == {"nll"}
    # ADORE's loss at weight 0 no longer forces retrieved candidates on the contrastive term.
    assert build_objective({"contrastive": {}, "adore_lambda": {"weight": 0, "params": {"metric_cut": 200}}}).candidates("bi_encoder") == ("global", None)
    with pytest.raises(ConfigError, match="every loss has weight 0"):
        build_objective({"nll": {"weight": 0}, "kl_distill": {"weight": 0.0}})


def test_loss_config_objects_are_accepted(st, helpers):
    from densekit.config import LossConfig

    objective = build_objective({"kl_distill": LossConfig(weight=0.5, params={"temperature": 2.0})})
    assert (
        objective.weights == {"kl_distill": 0.5}
        and objective.terms["kl_distill"].temperature == 2.0
    )


def test_candidate_modes_are_resolved_up_front():
    prod = build_objective(
        {
            "nll": {"weight": 0.1},
            "kl_distill": {"weight": 0.9, "params": {"temperature": 4}},
            "lwf": {},
        }
    )
    assert prod.candidates("bi_encoder", "cross_encoder") == ("global", "group")
    assert prod.candidates("bi_encoder", "bi_encoder") == ("global", "global")
    star = build_objective({"star_pairwise": {}})
    with pytest.raises(
        ConfigError, match="star_pairwise needs global candidates.*a cross_encoder student"
    ):
        star.candidates("cross_encoder")
    with pytest.raises(
        ConfigError, match="adore_lambda needs retrieved candidates.*which margin_mse cannot use"
    ):
        build_objective(
            {"adore_lambda": {"params": {"metric_cut": 200}}, "margin_mse": {}}
        ).candidates("bi_encoder")
    assert build_objective(
        {"adore_lambda": {"params": {"metric_cut": 200}}, "contrastive": {}}
    ).candidates("bi_encoder") == ("retrieved", None)
    assert build_objective({"adore_lambda": {"params": {"metric_cut": 200}}, "nll": {}}).candidates(
        "bi_encoder"
    ) == ("retrieved", None)
    align = build_objective({"embedding_mse": {}})
    assert align.candidates("bi_encoder", "bi_encoder") == (None, None) and not align.needs_passages


def test_mismatched_scores_are_a_clear_error(st, helpers):
    s, t = st
    retrieved = helpers.group_output(s)
    retrieved.candidates.mode = "retrieved"
    with pytest.raises(
        ValueError, match="kl_distill: cannot compare scores over group and retrieved candidates"
    ):
        build_objective({"kl_distill": {}})(retrieved, None, teacher=helpers.group_output(t))
