"""LEAD's layer-wise score distillation (`layer_distill`): per-layer KL between paired student
and teacher layers, re-weighted by how well each teacher layer ranks the positive.

Layer indices follow LEAD's code: 0 is the first transformer layer's output (ModelOutput.layer_ids).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from densekit.errors import ConfigError
from densekit.losses.base import Loss, check_shape, masked
from densekit.losses.distill import kl_distill
from densekit.output import ModelOutput

logger = logging.getLogger(__name__)

MAPPINGS = ("random", "last", "skip", "list")


def layer_pairs(
    mapping: str,
    n_student: int,
    n_teacher: int,
    k: int | None = None,
    student_layers=None,
    teacher_layers=None,
    generator: torch.Generator | None = None,
) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs.

    random: k sorted student layers and k sorted teacher layers drawn without replacement,
        paired in order (LEAD's `select_layer`); `generator` makes the draw reproducible.
    last:   the last k student layers with the last k teacher layers.
    skip:   the last k student layers with teacher layers 0, s, 2s, ... (s = n_teacher // n_student).
    list:   `student_layers[i]` with `teacher_layers[i]`.
    """
    if mapping == "list":
        if (
            student_layers is None
            or teacher_layers is None
            or len(student_layers) != len(teacher_layers)
            or not student_layers
        ):
            raise ValueError(
                "mapping 'list' needs student_layers and teacher_layers of the same, non-zero length"
            )
        for name, ids, n in (
            ("student_layers", student_layers, n_student),
            ("teacher_layers", teacher_layers, n_teacher),
        ):
            if any(not 0 <= i < n for i in ids):
                raise ValueError(f"{name} {list(ids)} out of range 0..{n - 1}")
        return list(zip(student_layers, teacher_layers))
    if k is None or k < 1:
        raise ValueError(f"mapping '{mapping}' needs num_layers >= 1, got {k}")
    if k > min(n_student, n_teacher):
        raise ValueError(
            f"num_layers {k} is more than the student ({n_student}) or teacher ({n_teacher}) has"
        )
    if mapping == "random":
        s = sorted(torch.randperm(n_student, generator=generator)[:k].tolist())
        t = sorted(torch.randperm(n_teacher, generator=generator)[:k].tolist())
    elif mapping == "last":
        s, t = list(range(n_student - k, n_student)), list(range(n_teacher - k, n_teacher))
    elif mapping == "skip":
        step = max(1, n_teacher // n_student)
        s, t = list(range(n_student - k, n_student)), list(range(0, n_teacher, step))[:k]
        if len(t) < k:
            raise ValueError(
                f"mapping 'skip' cannot find {k} teacher layers with step {step} in {n_teacher}"
            )
    else:
        raise ValueError(f"unknown mapping '{mapping}'; expected one of {', '.join(MAPPINGS)}")
    return list(zip(s, t))


def layer_distill(
    student_layers: Tensor,
    teacher_layers: Tensor,
    target: Tensor,
    pairs: list[tuple[int, int]],
    temperature: float = 1.0,
    layer_temperature: float = 10.0,
    reweight: bool = True,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Σ_i λ_i · T² KL(P_T^{t_i} ‖ P_S^{s_i}), λ = softmax_i(−NLL(teacher layer t_i) / layer_T), detached.

    Args:
        student_layers: `[Ls, B, C]` per-layer student scores.
        teacher_layers: `[Lt, B, C]` per-layer teacher scores over the same candidates.
        target: `[B]` column of each query's positive.
        pairs: (student layer, teacher layer) index pairs.
        temperature: T of the per-layer KL (LEAD's scripts use 1).
        layer_temperature: temperature of the re-weighting softmax (LEAD: 10).
        reweight: False gives every pair weight 1 (LEAD without --layer_score_reweight).
        keep: `[B, C]` bool, valid columns.

    Returns:
        (loss, λ `[len(pairs)]`).
    """
    Ls, B, C = check_shape(
        "student_layers", student_layers, (None, None, None), "layer_distill"
    ).shape
    Lt = check_shape("teacher_layers", teacher_layers, (None, B, C), "layer_distill").shape[0]
    check_shape("target", target, (B,), "layer_distill")
    kls, nlls = [], []
    for s, t in pairs:
        if not (0 <= s < Ls and 0 <= t < Lt):
            raise ValueError(
                f"layer_distill: pair ({s}, {t}) out of range for {Ls} student and {Lt} teacher layers"
            )
        kls.append(kl_distill(student_layers[s], teacher_layers[t], temperature, keep))
        with torch.no_grad():  # λ is a weight, never a path for gradients
            nlls.append(torch.nn.functional.cross_entropy(masked(teacher_layers[t], keep), target))
    if reweight:
        lam = torch.softmax(-torch.stack(nlls) / layer_temperature, dim=0)
    else:
        lam = torch.ones(len(pairs), device=student_layers.device)
    return (lam.to(kls[0].dtype) * torch.stack(kls)).sum(), lam


class LayerDistill(Loss):
    """LEAD: per-layer score distillation with layer re-weighting.

    Paired layers (student s_i, teacher t_i) are compared by KL over the same candidates; each
    pair weighs λ_i = softmax(−NLL(softmax(teacher layer t_i scores), pos) / layer_temperature),
    detached, so teacher layers that rank the positive well count more. With a `random` mapping
    the pairs are re-drawn every `redraw_every` calls from a generator seeded with (seed, draw
    number): every DDP rank draws the same pairs.

    With `joint: true` the teacher is trained with the student (LEAD's mutual distillation: all of
    its scripts train the teacher): this loss adds NLL(teacher final scores, pos) and the reverse
    response term KL(P_S ‖ P_T), and every teacher term of the objective passes gradients to the
    teacher (the trainer must then optimise the teacher: objective.teacher_trainable).

    Inputs:
        student.layer_scores `[Ls, B, C]`, teacher.layer_scores `[Lt, B, C]` (run both models
        with output_layers=True: objective.needs_layers), and final scores when joint.

    Reference:
        Sun et al., LEAD: Liberal Feature-based Distillation for Dense Retrieval,
        https://arxiv.org/abs/2212.05225
    """

    name = "layer_distill"
    modes = ("global", "group")
    needs_teacher = True
    needs_layers = True

    def __init__(
        self,
        mapping: str = "random",
        num_layers: int | None = None,
        student_layers: list[int] | None = None,
        teacher_layers: list[int] | None = None,
        redraw_every: int = 10,
        seed: int = 0,
        temperature: float = 1.0,
        layer_temperature: float = 10.0,
        reweight: bool = True,
        joint: bool = False,
    ):
        super().__init__()
        if mapping not in MAPPINGS:
            raise ConfigError(
                f"layer_distill: unknown mapping '{mapping}'; expected one of {', '.join(MAPPINGS)}"
            )
        if mapping != "list" and num_layers is None:
            raise ConfigError(
                f"layer_distill: mapping '{mapping}' needs num_layers (LEAD's scripts distil 5 layers)"
            )
        if redraw_every < 1 or temperature <= 0 or layer_temperature <= 0:
            raise ConfigError(
                "layer_distill: redraw_every, temperature and layer_temperature must be positive"
            )
        self.mapping, self.k = mapping, num_layers
        self.student_layers, self.teacher_layers = student_layers, teacher_layers
        self.redraw_every, self.seed = redraw_every, seed
        self.temperature, self.layer_temperature = temperature, layer_temperature
        self.reweight, self.joint = reweight, joint
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # saved with the objective
        self.pairs: list[tuple[int, int]] | None = None
        self.last_weights: Tensor | None = None

    def current_pairs(self, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
        """The pairs for this call (re-drawn every `redraw_every` calls for `random`)."""
        step = int(self.calls.item())
        if self.mapping == "random":
            if self.pairs is None or step % self.redraw_every == 0:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + step // self.redraw_every)
                self.pairs = layer_pairs("random", n_student, n_teacher, self.k, generator=g)
                logger.debug("layer_distill: step %d pairs %s", step, self.pairs)
        elif self.pairs is None:
            self.pairs = layer_pairs(
                self.mapping, n_student, n_teacher, self.k, self.student_layers, self.teacher_layers
            )
            logger.info(
                "layer_distill: %s mapping, (student, teacher) layers %s", self.mapping, self.pairs
            )
        return self.pairs

    def forward(self, student: ModelOutput, batch, teacher=None, reference=None) -> Tensor:
        if teacher is None:
            raise ValueError("layer_distill needs a teacher model run with output_layers=True")
        for who, out in (("student", student), ("teacher", teacher)):
            if out.layer_scores is None:
                raise ValueError(
                    f"layer_distill: the {who} output has no layer_scores: run it with output_layers=True"
                )
        s_l, t_l, cands = self.scores_pair(student, teacher, "teacher", layers=True)
        pairs = self.current_pairs(s_l.shape[0], t_l.shape[0])
        self.calls += 1
        loss, self.last_weights = layer_distill(
            s_l,
            self._t(t_l),
            cands.target,
            pairs,
            self.temperature,
            self.layer_temperature,
            self.reweight,
            cands.valid,
        )
        if self.joint:
            s, t, cands = self.scores_pair(student, teacher, "teacher")
            # LEAD's mutual terms: the teacher keeps learning the task and from the student.
            nll_t = torch.nn.functional.cross_entropy(masked(t, cands.valid), cands.target)
            loss = loss + nll_t + kl_distill(t, s, self.temperature, cands.valid)
        return loss
