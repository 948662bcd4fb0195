"""The loss interface: `forward(student, batch, teacher=None, reference=None) -> Tensor`.

A loss reads `ModelOutput`s: the student's, a teacher's (a model run online, or the batch's
offline `teacher_scores`), and `reference`, the frozen copy of the student taken at the start of a
stage (LwF). Each loss declares the candidate modes it can use; scores computed over global
candidates are cut down to per-query groups when a loss (or the teacher) needs groups, and any
other mismatch is an error naming both sides.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from densekit.candidates import Candidates, group_candidates
from densekit.output import ModelOutput


def check_shape(name: str, t: Tensor | None, shape: tuple, loss: str) -> Tensor:
    """Raise ValueError naming `name` unless `t` has `shape` (None entries match any size)."""
    if t is None:
        raise ValueError(f"{loss}: {name} is missing")
    ok = t.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{loss}: {name} must have shape {want}, got {list(t.shape)}")
    return t


def masked(scores: Tensor, keep: Tensor | None) -> Tensor:
    """Scores with dropped columns (keep False) set to -inf, so softmax gives them no mass."""
    return scores if keep is None else scores.masked_fill(~keep, float("-inf"))


class Loss(nn.Module):
    """Base class of the named losses.

    Class attributes:
        name: the registry name (`LOSSES` key, YAML key).
        modes: candidate modes the loss can use, in order of preference.
        needs_teacher / needs_reference / needs_layers / needs_scores: what the trainer must
            provide (a teacher output or offline teacher scores; the frozen stage-start copy of
            the student; per-layer scores; student scores over passages).
    """

    name: ClassVar[str] = ""
    modes: ClassVar[tuple[str, ...]] = ("global", "group")
    needs_teacher: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    needs_layers: ClassVar[bool] = False
    needs_scores: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        # Set to False by the objective when the teacher is trained jointly (LEAD's mutual
        # distillation): teacher terms then pass gradients to the teacher too.
        self.detach_teacher = True

    @property
    def reads_teacher(self) -> bool:
        """Whether the loss reads the teacher at all (its outputs, offline scores or layers)."""
        return self.needs_teacher or self.needs_layers

    # --- choosing the candidate mode -----------------------------------------------------------

    def pick_mode(self, *modes: str | None) -> str:
        """The mode to compare outputs computed over `modes` (None entries are ignored).

        Equal modes stay; global next to group becomes group (global contains every group).
        """
        have = {m for m in modes if m is not None}
        if not have:
            raise ValueError(
                f"{self.name}: no scores to compare (outputs were computed without passages)"
            )
        if len(have) == 1:
            mode = have.pop()
            if mode not in self.modes and mode == "global" and "group" in self.modes:
                mode = "group"
        elif have == {"global", "group"}:
            mode = "group"
        else:
            raise ValueError(
                f"{self.name}: cannot compare scores over {' and '.join(sorted(have))} candidates"
            )
        if mode not in self.modes:
            raise ValueError(
                f"{self.name} needs {' or '.join(self.modes)} candidates, but the scores are over {mode} candidates"
            )
        return mode

    def teacher_output(self, teacher: ModelOutput | None, batch) -> ModelOutput:
        """The teacher's output, or one built from the batch's offline `teacher_scores [B, G]`."""
        if teacher is not None:
            return teacher
        ts = getattr(batch, "teacher_scores", None)
        if ts is None:
            raise ValueError(
                f"{self.name} needs teacher scores: give a teacher model, or train on groups scored by the "
                "`score` step (TrainBatch.teacher_scores is None)"
            )
        ids = batch.tensors(ts.device)
        cands = group_candidates(
            ids["passage_ids"], ids["positive_ids"], ids["positive_mask"], batch.group_size
        )
        return ModelOutput(scores=ts, candidates=cands)

    def _t(self, t: Tensor) -> Tensor:
        return t.detach() if self.detach_teacher else t

    def scores_pair(
        self, student: ModelOutput, other: ModelOutput, other_name: str, layers: bool = False
    ) -> tuple[Tensor, Tensor, Candidates]:
        """(student scores, other scores, candidates) over one common mode, shapes checked."""
        mode = self.pick_mode(student.mode, other.mode)
        s, cands = student.in_mode(mode, layers=layers)
        o, o_cands = other.in_mode(mode, layers=layers)
        if s.shape[-2:] != o.shape[-2:]:
            raise ValueError(
                f"{self.name}: {other_name} scores {list(o.shape)} do not match student scores {list(s.shape)} over {mode} candidates"
            )
        return s, o, cands

    def forward(
        self,
        student: ModelOutput,
        batch,
        teacher: ModelOutput | None = None,
        reference: ModelOutput | None = None,
    ) -> Tensor:
        raise NotImplementedError
