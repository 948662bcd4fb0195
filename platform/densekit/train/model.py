"""What a training run trains: the configured models, the objective (the weighted losses), the
candidate sets they need, and `TrainModule`, which holds everything trainable for DDP."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from densekit.config import ModelConfig, TrainConfig
from densekit.errors import ConfigError
from densekit.train.step import compute_loss


def load_configured_model(mc: ModelConfig):
    """The model a ModelConfig describes (loaded, or a student cut from teacher layers), with its
    dropout overridden when asked."""
    from densekit.models import model_from_config

    model = model_from_config(mc)
    if mc.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = mc.dropout
    return model


def build_objective(cfg: TrainConfig):
    """The weighted sum of the configured losses (checks every loss name and parameter)."""
    from densekit.losses import build_objective as _build

    return _build(cfg.losses)


def model_kind(mc: ModelConfig | None) -> str | None:
    """The kind of model a ModelConfig loads, without loading it."""
    if mc is None:
        return None
    if mc.kind:
        return mc.kind
    from densekit.models.spec import read_spec

    spec = read_spec(mc.path) if Path(mc.path).is_dir() else None
    return spec.kind if spec is not None else "bi_encoder"


def candidate_modes(cfg: TrainConfig, objective=None) -> tuple[str, str | None]:
    """(student mode, teacher mode): what the losses need of the models, checked against them.

    "none" = the student encodes queries only (embedding alignment).
    """
    objective = objective or build_objective(cfg)
    student, teacher = objective.candidates(model_kind(cfg.model), model_kind(cfg.teacher))
    if cfg.candidates != "auto":
        student = cfg.candidates
        for loss in objective.active.values():  # before any worker starts, not in its first step
            if loss.needs_scores:
                try:
                    loss.pick_mode(student, teacher if loss.reads_teacher else None)
                except ValueError as e:
                    raise ConfigError(f"candidates: {student}: {e}") from None
    if cfg.data.teacher_embeddings is not None:
        if cfg.teacher is not None:
            raise ConfigError("give either `teacher` (run online) or data.teacher_embeddings (read from disk), not both")
        other = [name for name, t in objective.active.items() if t.needs_teacher and name != "embedding_mse"]
        if other:
            raise ConfigError(
                f"data.teacher_embeddings holds query embeddings, which only embedding_mse reads; "
                f"{', '.join(other)} need a teacher model or data.teacher_scores"
            )
    elif objective.needs_teacher and cfg.teacher is None and not cfg.data.teacher_scores:
        raise ConfigError(
            "these losses need a teacher: set `teacher`, data.teacher_scores=true"
            + (" or data.teacher_embeddings" if "embedding_mse" in objective.terms else "")
        )
    return student or "none", teacher


def freeze_passage_tower(model):
    """Only the query encoder trains (ADORE, query-encoder distillation). A shared tower is split
    into two copies first; the passage copy keeps the loaded weights, i.e. stays the encoder the
    fixed document index was built with, and is saved beside the query tower."""
    if model.spec.shared:
        model = model._untie(model.spec.replace(shared=False))
    model.passage_tower.requires_grad_(False)
    return model


class TrainModule(nn.Module):
    """Everything trainable in one module, so DDP syncs all of it: the student, a jointly trained
    teacher, and losses with parameters (e.g. learned layer weights)."""

    def __init__(self, student, teacher, objective):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.objective = objective
        self.objective_has_state = bool(list(objective.parameters()) or list(objective.buffers()))

    def forward(self, batch, mode, teacher_mode=None, teacher=None, frozen=None, retriever=None):
        return compute_loss(self, batch, mode, teacher_mode, teacher, frozen, retriever)
