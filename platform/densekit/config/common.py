"""Pieces shared by several steps: resources, models and losses."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Optional  # noqa: UP035

from omegaconf import MISSING

from densekit.config.loader import opt, unknown_name
from densekit.errors import ConfigError


@dataclass
class ResourcesConfig:
    """Where and how wide a step runs. Deliberately not called ScalingConfig (Ray has one)."""

    num_workers: int = opt(1, "Ray workers / actors for this step (pool size, DDP world size)")
    use_gpu: bool = opt(False, "give each worker a GPU (num_gpus=1 per actor / worker)")
    cpus_per_worker: float = opt(1.0, "CPUs reserved per worker or actor")
    gpus_per_worker: float = opt(1.0, "GPUs per worker when use_gpu (fractions share a GPU)")
    address: Optional[str] = opt(
        None, "Ray address; None = the job's cluster under `ray job submit`, else a local Ray"
    )


# --- models and losses (shared by train, score, encode) ---------------------------------------------

MODEL_KINDS = ("bi_encoder", "colbert", "cross_encoder")


@dataclass
class ModelConfig:
    """Which model to load or build, and how to initialise a student (densekit.models.model_from_config).

    Spec fields left null keep the saved model's values (densekit_model.json or the
    sentence-transformers files); for a plain Hugging Face encoder they define the new model.
    """

    path: str = opt(MISSING, "model directory: a densekit save, a sentence-transformers or a Hugging Face encoder")
    kind: Optional[str] = opt(None, "bi_encoder | colbert | cross_encoder; null = the saved kind, else bi_encoder")
    pooling: Optional[str] = opt(None, "bi-encoder pooling: cls | mean")
    normalize: Optional[bool] = opt(None, "L2-normalise bi-encoder embeddings")
    similarity: Optional[str] = opt(None, "dot | cosine (cosine implies normalised embeddings)")
    head_dim: Optional[int] = opt(None, "bi-encoder linear head output size (new heads start random)")
    head_layernorm: Optional[bool] = opt(None, "LayerNorm after the head (STAR's RobertaDot)")
    shared: Optional[bool] = opt(None, "one tower for queries and passages (false: separate towers)")
    max_query_length: Optional[int] = opt(None, "query tokens (default 32)")
    max_passage_length: Optional[int] = opt(None, "passage tokens (default 256)")
    colbert_dim: Optional[int] = opt(None, "ColBERT compression size (default 128)")
    query_augmentation: Optional[bool] = opt(None, "ColBERT: pad queries with [MASK] to max_query_length")
    student_layers: Optional[typing.List[int]] = opt(  # noqa: UP006
        None, "build a student keeping these layers of `path` (0 = first transformer layer), e.g. [0, 11]"
    )
    student_num_layers: Optional[int] = opt(None, "build a student keeping the first n layers of `path` (PROD)")
    project_to: Optional[str] = opt(
        None, "build a bi-encoder from `path` with a linear projection to this teacher's embedding size"
    )
    dropout: Optional[float] = opt(None, "set every dropout probability of the encoder (e.g. 0.0)")

    def validate(self) -> None:
        if self.kind is not None and self.kind not in MODEL_KINDS:
            raise ConfigError(unknown_name("model kind", self.kind, MODEL_KINDS))
        if self.pooling is not None and self.pooling not in ("cls", "mean"):
            raise ConfigError(unknown_name("pooling", self.pooling, ("cls", "mean")))
        if self.similarity is not None and self.similarity not in ("dot", "cosine"):
            raise ConfigError(unknown_name("similarity", self.similarity, ("dot", "cosine")))
        inits = [n for n in ("student_layers", "student_num_layers", "project_to") if getattr(self, n) is not None]
        if len(inits) > 1:
            raise ConfigError(f"model: set only one of {', '.join(inits)}")


@dataclass
class LossConfig:
    """One term of the training objective: `losses: {<name>: {weight, params}}`, names in densekit.losses.LOSSES."""

    weight: float = opt(1.0, "weight of this loss in the sum")
    params: typing.Dict[str, Any] = opt({}, "the loss's own parameters, checked when the objective is built")  # noqa: UP006
