"""InfoNCE over in-batch + hard negatives (`contrastive`) and the plain NLL of the positive (`nll`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from densekit.losses.base import Loss, check_shape, masked
from densekit.output import ModelOutput


def info_nce(
    scores: Tensor, target: Tensor, temperature: float = 1.0, keep: Tensor | None = None
) -> Tensor:
    """Mean over queries of -log softmax(scores / T)[target].

    Args:
        scores: `[B, C]` student scores over the candidates.
        target: `[B]` long, the column of each query's positive.
        temperature: T; scores are divided by it.
        keep: `[B, C]` bool, columns taking part (False: padding, other relevant passages).

    Returns:
        A scalar.
    """
    B = check_shape("scores", scores, (None, None), "info_nce").shape[0]
    check_shape("target", target, (B,), "info_nce")
    if keep is not None:
        check_shape("keep", keep, tuple(scores.shape), "info_nce")
    return F.cross_entropy(masked(scores / temperature, keep), target)


class Contrastive(Loss):
    """InfoNCE with temperature over the candidates the student was scored on: with global
    candidates, every query against all passages of the all-gathered batch (its positive, the
    other queries' positives and every hard negative); with retrieved candidates, against a fixed
    index's top k (the labels-only twin of query-encoder distillation and ADORE).

    Passages judged relevant to a query other than its sampled positive (the same passage in two
    groups, a second positive) are left out of its softmax unless `mask_relevant` is false.

    Inputs:
        student.scores `[B, C]` and student.candidates (target, relevant, valid).

    Reference:
        van den Oord et al., Representation Learning with Contrastive Predictive Coding,
        https://arxiv.org/abs/1807.03748; Karpukhin et al., DPR, https://arxiv.org/abs/2004.04906
    """

    name = "contrastive"
    modes = ("global", "group", "retrieved")

    def __init__(self, temperature: float = 0.05, mask_relevant: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.mask_relevant = mask_relevant

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        scores, cands = student.in_mode(self.pick_mode(student.mode))
        keep = cands.valid
        if self.mask_relevant:
            keep = keep & ~(cands.relevant & ~F.one_hot(cands.target, scores.shape[1]).bool())
        return info_nce(scores, cands.target, self.temperature, keep)


class NLL(Loss):
    """Negative log-likelihood of the positive under softmax(student scores), no temperature
    (the `NLL(student, pos)` term of LEAD and PROD).

    Inputs:
        student.scores `[B, C]`, student.candidates.target.

    Reference:
        PROD, https://arxiv.org/abs/2209.13335; LEAD, https://arxiv.org/abs/2212.05225
    """

    name = "nll"
    modes = ("global", "group", "retrieved")

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        scores, cands = student.in_mode(self.pick_mode(student.mode))
        return info_nce(scores, cands.target, 1.0, cands.valid)
