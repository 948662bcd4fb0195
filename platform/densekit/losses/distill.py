"""Distillation from scores and embeddings: `margin_mse`, `kl_distill` (T² scaled),
`embedding_mse` (query embedding alignment) and `lwf` (KL to the frozen stage-start student)."""

from __future__ import annotations

import torch
from torch import Tensor

from densekit.losses.base import Loss, check_shape, masked
from densekit.output import ModelOutput


def margin_mse(student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """Mean over queries and negatives of ((s_pos − s_neg) − (t_pos − t_neg))².

    Args:
        student_scores: `[B, G]`, positive in column 0, G-1 negatives after it.
        teacher_scores: `[B, G]` raw teacher scores (not normalised).

    Returns:
        A scalar; with G = 2 exactly Hofstätter et al.'s Margin-MSE.
    """
    B, G = check_shape("student_scores", student_scores, (None, None), "margin_mse").shape
    check_shape("teacher_scores", teacher_scores, (B, G), "margin_mse")
    if G < 2:
        raise ValueError(
            f"margin_mse: needs a positive and at least one negative per query, got groups of {G}"
        )
    s_margin = student_scores[:, :1] - student_scores[:, 1:]  # [B, G-1]
    t_margin = teacher_scores[:, :1] - teacher_scores[:, 1:]
    return ((s_margin - t_margin) ** 2).mean()


def kl_scores(
    student_scores: Tensor,
    teacher_scores: Tensor,
    temperature: float = 1.0,
    keep: Tensor | None = None,
    teacher_temperature: float | None = None,
) -> Tensor:
    """KL(softmax(t/T_t) ‖ softmax(s/T)), mean over queries ("batchmean"), without T² scaling.

    Args:
        student_scores, teacher_scores: `[B, C]` over the same candidates.
        temperature: T, applied to the student's scores (and the teacher's unless teacher_temperature).
        keep: `[B, C]` bool; dropped columns get no probability on either side.
        teacher_temperature: T_t for the teacher's scores when they are on another scale (a
            cross-encoder's logits teaching a cosine student); None = T.
    """
    B, C = check_shape("student_scores", student_scores, (None, None), "kl").shape
    check_shape("teacher_scores", teacher_scores, (B, C), "kl")
    t_temp = temperature if teacher_temperature is None else teacher_temperature
    log_s = torch.log_softmax(masked(student_scores / temperature, keep), dim=-1)
    log_t = torch.log_softmax(masked(teacher_scores / t_temp, keep), dim=-1)
    terms = log_t.exp() * (log_t - log_s)  # [B, C]
    if keep is not None:  # 0 * (-inf - -inf) is nan: dropped columns contribute nothing
        terms = terms.masked_fill(~keep, 0.0)
    return terms.sum() / B


def kl_distill(
    student_scores: Tensor,
    teacher_scores: Tensor,
    temperature: float = 1.0,
    keep: Tensor | None = None,
    teacher_temperature: float | None = None,
) -> Tensor:
    """T² · KL(softmax(t/T_t) ‖ softmax(s/T)), T_t = T unless given; at T = 1 equal to
    F.kl_div(log_softmax(s), softmax(t), "batchmean")."""
    # Gradients of the softened KL shrink as 1/T²: scale back (Hinton et al.), as PROD does.
    return kl_scores(student_scores, teacher_scores, temperature, keep, teacher_temperature) * temperature**2


def embedding_mse(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Mean over queries and dimensions of (f_S(q) − f_T(q))²: `[B, D]` and `[B, D]`."""
    B, D = check_shape("student_emb", student_emb, (None, None), "embedding_mse").shape
    check_shape("teacher_emb", teacher_emb, (B, D), "embedding_mse")
    return ((student_emb - teacher_emb) ** 2).mean()


class MarginMSE(Loss):
    """Margin-MSE: the student matches the teacher's score margin between the positive and each
    negative of the query's group (global student scores are cut down to groups).

    Inputs:
        student.scores; teacher scores over the same group (`teacher` output or the batch's
        offline `teacher_scores [B, G]`).

    Reference:
        Hofstätter et al., Improving Efficient Neural Ranking Models with Cross-Architecture
        Knowledge Distillation, https://arxiv.org/abs/2010.02666
    """

    name = "margin_mse"
    modes = ("group",)
    needs_teacher = True

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        s, t, _ = self.scores_pair(student, self.teacher_output(teacher, batch), "teacher")
        return margin_mse(s, self._t(t))


class _Tempered(Loss):
    """A loss with a softmax temperature T > 0 (KLDistill, LwF)."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature


class KLDistill(_Tempered):
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) over the teacher's candidates: a bi-encoder or ColBERT
    teacher scored over global candidates distils over them; a cross-encoder teacher (or offline
    scores) over each query's group. `teacher_temperature` divides the teacher's scores instead of
    T where they are on another scale (a cross-encoder's logits against a cosine student's scores).

    Inputs:
        student.scores; teacher scores (`teacher` output or the batch's `teacher_scores`).

    Reference:
        Hinton et al., Distilling the Knowledge in a Neural Network, https://arxiv.org/abs/1503.02531;
        PROD, https://arxiv.org/abs/2209.13335
    """

    name = "kl_distill"
    modes = ("global", "group")
    needs_teacher = True

    def __init__(self, temperature: float = 1.0, teacher_temperature: float | None = None):
        super().__init__(temperature)
        if teacher_temperature is not None and teacher_temperature <= 0:
            raise ValueError(f"teacher_temperature must be positive, got {teacher_temperature}")
        self.teacher_temperature = teacher_temperature

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        s, t, cands = self.scores_pair(student, self.teacher_output(teacher, batch), "teacher")
        return kl_distill(s, self._t(t), self.temperature, cands.valid, self.teacher_temperature)


class LwF(_Tempered):
    """Learning without Forgetting: T² · KL(softmax(s_ref/T) ‖ softmax(s/T)) to the frozen copy of
    the student taken at the start of the stage (PROD's third term).

    Inputs:
        student.scores; `reference` (the frozen copy's ModelOutput over the same batch: the
        trainer keeps the copy and runs it without gradients when objective.needs_reference).

    Reference:
        Li and Hoiem, Learning without Forgetting, https://arxiv.org/abs/1606.09282; PROD,
        https://arxiv.org/abs/2209.13335
    """

    name = "lwf"
    modes = ("global", "group")
    needs_reference = True

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        if reference is None:
            raise ValueError(
                "lwf needs the frozen copy of the student taken at the start of the stage: pass its output as `reference`"
            )
        s, r, cands = self.scores_pair(student, reference, "reference")
        return kl_distill(s, r.detach(), self.temperature, cands.valid)  # the copy is never trained


class EmbeddingMSE(Loss):
    """Query embedding alignment: mean squared difference of the student's and the teacher's query
    embeddings (no labels, no passages); documents stay indexed with the teacher.

    Inputs:
        student.query_emb `[B, D]`, teacher.query_emb `[B, D]`.

    Reference:
        Query Encoder Distillation via Embedding Alignment (distill-retriever),
        https://github.com/Guest400123064/distill-retriever
    """

    name = "embedding_mse"
    modes = ()
    needs_teacher = True
    needs_scores = False

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        if teacher is None or teacher.query_emb is None:
            raise ValueError(
                "embedding_mse needs the teacher's query embeddings: run a bi-encoder teacher on the batch"
            )
        if student.query_emb is None or student.query_emb.dim() != 2:
            raise ValueError(
                "embedding_mse needs the student's single-vector query embeddings [B, D] (a bi-encoder)"
            )
        return embedding_mse(student.query_emb, self._t(teacher.query_emb))
