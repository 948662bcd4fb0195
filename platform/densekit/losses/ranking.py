"""Pairwise ranking losses of STAR (`star_pairwise`) and ADORE (`adore_lambda`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from densekit.losses.base import Loss, check_shape
from densekit.output import ModelOutput


def star_pairwise(
    scores: Tensor, target: Tensor, relevant: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Mean over (query, negative) pairs of −log σ(s[i, pos_i] − s[i, j]).

    Every candidate not relevant to query i is a negative: the other queries' positives ("random"
    negatives) and every static hard negative of the batch, which all queries share.

    Args:
        scores: `[B, C]` over global candidates.
        target: `[B]` column of each query's positive.
        relevant: `[B, C]` bool; relevant pairs are masked out (never negatives).
        valid: `[B, C]` bool or None.

    Returns:
        Σ pair losses / number of pairs (DRhard's normalisation over both negative kinds).
    """
    B, C = check_shape("scores", scores, (None, None), "star_pairwise").shape
    check_shape("target", target, (B,), "star_pairwise")
    check_shape("relevant", relevant, (B, C), "star_pairwise")
    neg = (
        ~relevant
        if valid is None
        else ~relevant & check_shape("valid", valid, (B, C), "star_pairwise")
    )
    pos = scores.gather(1, target.unsqueeze(1))  # [B, 1]
    pair = F.softplus(scores - pos)  # −log σ(s_pos − s_j), [B, C]
    n = neg.sum()
    if n == 0:
        raise ValueError(
            "star_pairwise: no negative pairs in the batch (every candidate is relevant)"
        )
    return (pair * neg).sum() / n


def adore_lambda(
    scores: Tensor, relevant: Tensor, ranks: Tensor, metric_cut: int, valid: Tensor | None = None
) -> Tensor:
    """ADORE's LambdaRank-style loss on retrieved candidates, weighted by |ΔRR@cut|.

    For each query and pair (i, j) with y_i > y_j: C_ij = log(1 + exp(−(s_i − s_j))),
    w_ij = |1/r_i·[r_i ≤ cut] − 1/r_j·[r_j ≤ cut]|; L_q = Σ C·w / #pairs; L = mean over queries
    that have pairs. (DRhard sums both orientations and divides by 2·#pairs: the same value.)

    Args:
        scores: `[B, C]` query·document scores of the retrieved (+ appended) candidates.
        relevant: `[B, C]` bool labels.
        ranks: `[B, C]` 1-based ranks in the retrieved list (appended positives after k).
        metric_cut: RR truncation; ranks beyond it weigh 0. Required: DRhard's default None makes
            every weight 0.
        valid: `[B, C]` bool, False on padding.
    """
    B, C = check_shape("scores", scores, (None, None), "adore_lambda").shape
    check_shape("relevant", relevant, (B, C), "adore_lambda")
    check_shape("ranks", ranks, (B, C), "adore_lambda")
    if metric_cut is None or metric_cut < 1:
        raise ValueError(
            f"adore_lambda: metric_cut must be a positive rank cut-off, got {metric_cut}"
        )
    valid = (
        torch.ones_like(relevant)
        if valid is None
        else check_shape("valid", valid, (B, C), "adore_lambda")
    )
    rr = torch.where(
        ranks <= metric_cut, 1.0 / ranks.to(scores.dtype), torch.zeros((), dtype=scores.dtype)
    )  # [B, C]
    w = (rr.unsqueeze(2) - rr.unsqueeze(1)).abs()  # [B, C, C], detached by construction
    y = relevant & valid
    pairs = y.unsqueeze(2) & (~relevant & valid).unsqueeze(1)  # i relevant, j not: [B, C, C]
    cost = F.softplus(-(scores.unsqueeze(2) - scores.unsqueeze(1)))  # log(1 + e^{−(s_i − s_j)})
    n = pairs.sum((1, 2))  # [B]
    per_query = (cost * w * pairs).sum((1, 2)) / n.clamp(min=1)
    has = n > 0
    if not has.any():
        raise ValueError("adore_lambda: no (relevant, non-relevant) pair in any query")
    return per_query[has].mean()


class StarPairwise(Loss):
    """STAR: pairwise logistic loss of each query's positive against in-batch "random" negatives
    (other queries' positives) and the static hard negatives shared by the whole batch; relevant
    pairs are masked.

    Inputs:
        student.scores `[B, C]` over global candidates, student.candidates (target, relevant).

    Reference:
        Zhan et al., Optimizing Dense Retrieval Model Training with Hard Negatives,
        https://arxiv.org/abs/2104.08051
    """

    name = "star_pairwise"
    modes = ("global",)

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = _positive_temperature(temperature)

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        scores, cands = student.in_mode(self.pick_mode(student.mode))
        return star_pairwise(scores / self.temperature, cands.target, cands.relevant, cands.valid)


class AdoreLambda(Loss):
    """ADORE: LambdaRank-style pairwise loss over the top-k retrieved from a fixed document index
    (positives not retrieved appended below rank k), weighted by |ΔRR| truncated at `metric_cut`.

    Inputs:
        student.scores `[B, C]` over retrieved candidates (candidates.retrieved_candidates +
        score_retrieved), student.candidates (relevant, ranks, valid).

    Reference:
        Zhan et al., Optimizing Dense Retrieval Model Training with Hard Negatives,
        https://arxiv.org/abs/2104.08051
    """

    name = "adore_lambda"
    modes = ("retrieved",)

    def __init__(self, metric_cut: int, temperature: float = 1.0):
        super().__init__()
        if not isinstance(metric_cut, int) or metric_cut < 1:
            raise ValueError(
                f"metric_cut must be a positive integer rank (DRhard's README uses 200), got {metric_cut!r}"
            )
        self.metric_cut = metric_cut
        self.temperature = _positive_temperature(temperature)

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        scores, cands = student.in_mode(self.pick_mode(student.mode))
        return adore_lambda(scores / self.temperature, cands.relevant, cands.ranks, self.metric_cut, cands.valid)


def _positive_temperature(temperature: float) -> float:
    """STAR's and ADORE's scores are divided by `temperature` before the pairwise logistic cost:
    1.0 (the default) is the paper's, on unnormalised dot products; cosine scores in [-1, 1] (a
    normalised model such as all-MiniLM-L6-v2) need a small one (e.g. 0.05) for the same margins."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return float(temperature)
