"""Losses by name, and the weighted objective a training config describes.

    losses:                                   # YAML: name -> {weight, params}
      nll: {weight: 0.1}
      kl_distill: {weight: 0.9, params: {temperature: 4.0}}
      lwf: {weight: 1.0, params: {temperature: 4.0}}          # PROD's stage loss

`build_objective(cfg)` checks every name and parameter at construction (a typo fails at once,
with a suggestion). The trainer calls `objective(student, batch, teacher=..., reference=...)`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from densekit.errors import ConfigError
from densekit.losses.base import Loss
from densekit.losses.contrastive import NLL, Contrastive, info_nce
from densekit.losses.distill import (
    EmbeddingMSE,
    KLDistill,
    LwF,
    MarginMSE,
    embedding_mse,
    kl_distill,
    margin_mse,
)
from densekit.losses.layers import LayerDistill, layer_distill, layer_pairs
from densekit.losses.ranking import AdoreLambda, StarPairwise, adore_lambda, star_pairwise
from densekit.output import ModelOutput

LOSSES: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (
        Contrastive,
        NLL,
        StarPairwise,
        AdoreLambda,
        MarginMSE,
        KLDistill,
        EmbeddingMSE,
        LwF,
        LayerDistill,
    )
}

__all__ = [
    "LOSSES", "Loss", "Objective", "build_objective", "info_nce", "kl_distill", "margin_mse", "embedding_mse",
    "star_pairwise", "adore_lambda", "layer_distill", "layer_pairs",
]  # fmt: skip


class Objective(nn.Module):
    """A weighted sum of named losses; what the trainer optimises.

    Attributes (what the trainer must provide):
        needs_teacher: a teacher output or offline teacher scores.
        needs_reference: the frozen stage-start copy of the student (LwF).
        needs_layers: run student and teacher with output_layers=True.
        teacher_trainable: the teacher is trained jointly (optimise its parameters too).
        last_terms: each term's (unweighted) value at the last call, detached tensors for logging
            (no device sync until the trainer reads them).
        active: the terms with a non-zero weight (the only ones computed; `terms` keeps them all).
    """

    def __init__(self, losses: Mapping[str, tuple[float, Loss]]):
        super().__init__()
        if not losses:
            raise ConfigError("losses: name at least one loss (one of: " + ", ".join(LOSSES) + ")")
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in losses.items()})
        self.weights = {name: float(w) for name, (w, _) in losses.items()}
        # A term at weight 0 is off: not computed, not logged, and what only it needs (a teacher,
        # layer outputs) is not run. It stays in `terms` so checkpoints keep the same keys.
        self.active = {name: loss for name, loss in self.terms.items() if self.weights[name] != 0.0}
        if not self.active:
            raise ConfigError("losses: every loss has weight 0; give at least one a non-zero weight")
        self.teacher_trainable = any(getattr(loss, "joint", False) for loss in self.active.values())
        for loss in self.terms.values():
            loss.detach_teacher = not self.teacher_trainable
        self.last_terms: dict[str, Tensor] = {}

    @property
    def needs_teacher(self) -> bool:
        return any(loss.needs_teacher for loss in self.active.values())

    @property
    def reads_teacher(self) -> bool:
        """Whether any active term reads the teacher (an online teacher is needed only then)."""
        return any(loss.reads_teacher for loss in self.active.values())

    @property
    def needs_reference(self) -> bool:
        return any(loss.needs_reference for loss in self.active.values())

    @property
    def needs_layers(self) -> bool:
        return any(loss.needs_layers for loss in self.active.values())

    @property
    def needs_passages(self) -> bool:
        return any(loss.needs_scores for loss in self.active.values())

    def candidates(
        self, student_kind: str, teacher_kind: str | None = None
    ) -> tuple[str | None, str | None]:
        """(student mode, teacher mode) to run the models with, checked against every loss.

        Bi-encoder and ColBERT students are scored over global candidates (which contain every
        group), cross-encoders over groups; ADORE's loss needs retrieved candidates. A teacher is
        scored like the student unless it is a cross-encoder (groups only).

        Raises:
            ConfigError: a loss cannot use what the models can score, naming both.
        """
        scored = [n for n, loss in self.active.items() if loss.needs_scores]
        retrieved = [n for n in scored if self.terms[n].modes == ("retrieved",)]
        if not scored:
            return None, None
        if retrieved:
            others = [n for n in scored if "retrieved" not in self.terms[n].modes]
            if others:
                raise ConfigError(
                    f"{retrieved[0]} needs retrieved candidates (a fixed index), which {', '.join(others)} cannot use"
                )
            student = "retrieved"
        else:
            student = "group" if student_kind == "cross_encoder" else "global"
        teacher = None
        if teacher_kind is not None:
            teacher = "group" if teacher_kind == "cross_encoder" else student
        for name in scored:
            loss = self.terms[name]
            t_mode = teacher if loss.reads_teacher else None
            try:
                loss.pick_mode(student, t_mode)
            except ValueError as e:
                why = f" (a {student_kind} student)" if student_kind == "cross_encoder" else ""
                raise ConfigError(f"{e}{why}") from None
        return student, teacher

    def forward(
        self,
        student: ModelOutput,
        batch,
        teacher: ModelOutput | None = None,
        reference: ModelOutput | None = None,
    ) -> Tensor:
        total: Tensor | None = None
        self.last_terms = {}
        for name, loss in self.active.items():
            value = loss(student, batch, teacher=teacher, reference=reference)
            self.last_terms[name] = value.detach()
            term = self.weights[name] * value
            total = term if total is None else total + term
        assert total is not None
        return total


def build_objective(losses_cfg: Mapping[str, Any]) -> Objective:
    """Build the weighted objective from `{name: {weight, params}}` (dicts or LossConfig objects).

    Raises:
        ConfigError: an unknown loss name or parameter (with a did-you-mean), a missing required
            parameter, or a value the loss rejects.
    """
    built: dict[str, tuple[float, Loss]] = {}
    for name, entry in losses_cfg.items():
        if name not in LOSSES:
            close = difflib.get_close_matches(name, list(LOSSES), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown loss '{name}'; expected one of {', '.join(LOSSES)}.{hint}")
        weight, params = _entry(name, entry)
        built[name] = (weight, _construct(name, LOSSES[name], params))
    return Objective(built)


def _entry(name: str, entry: Any) -> tuple[float, dict]:
    if entry is None:
        return 1.0, {}
    if isinstance(entry, Mapping):
        unknown = set(entry) - {"weight", "params"}
        if unknown:
            raise ConfigError(
                f"losses.{name}: unknown key(s) {', '.join(sorted(unknown))}; expected weight and params"
            )
        weight, params = entry.get("weight", 1.0), entry.get("params") or {}
    else:  # a LossConfig dataclass
        weight, params = getattr(entry, "weight", 1.0), getattr(entry, "params", None) or {}
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise ConfigError(f"losses.{name}.weight: expected a number, got {weight!r}") from None
    return weight, dict(params)


def _construct(name: str, cls: type[Loss], params: dict) -> Loss:
    sig = inspect.signature(cls.__init__)
    allowed = [p for p in sig.parameters if p != "self"]
    for key in params:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            if not allowed:
                raise ConfigError(f"losses.{name}.params: unknown parameter '{key}': {name} takes no parameters")
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"losses.{name}.params: unknown parameter '{key}'.{hint} Valid: {', '.join(allowed)}"
            )
    missing = [
        p
        for p, v in sig.parameters.items()
        if p != "self" and v.default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise ConfigError(
            f"losses.{name}.params: missing required parameter(s) {', '.join(missing)}"
            + _why(name, missing)
        )
    try:
        return cls(**params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"losses.{name}.params: {e}") from None


def _why(name: str, missing: list[str]) -> str:
    if name == "adore_lambda" and "metric_cut" in missing:
        return " (DRhard's default None zeroes every weight; its README uses 200)"
    return ""
