"""Typed configs: one dataclass per step, loaded from YAML plus dotted `key=value` overrides.

OmegaConf (structured configs) is used here and only here: `load_config` merges the dataclass
defaults, the YAML file and the overrides, checks keys and types, and returns a plain dataclass
instance. Each field carries a one-line `help` that `densekit <step> --help` prints.

Conventions: required values use `MISSING`; nested groups are dataclasses; anything chosen by name
(models, losses, index types) is a string key into a registry dict, checked by `validate()`.

The package: `loader` (load_config, opt, describe_fields, validate_tree), and the dataclasses by area:
`common` (resources, model, loss), `data` (import, export, generate), `retrieval` (encode, index,
search, evaluate, mine, score), `training` (train, tune), `method_steps` (report, build, trainset,
select, speed). Every name is importable from densekit.config. The method files' schema and
`load_method` live in `method_file` (imported from there: they are densekit.methods' part).
"""

from __future__ import annotations

from omegaconf import MISSING

from densekit.config.common import (
    MODEL_KINDS,
    LossConfig,
    ModelConfig,
    ResourcesConfig,
)
from densekit.config.data import (
    EXPORT_FORMATS,
    IMPORT_FORMATS,
    ExportConfig,
    GenerateConfig,
    ImportConfig,
)
from densekit.config.loader import (
    FOREIGN_NAMES,
    describe_fields,
    load_config,
    missing_keys,
    opt,
    unknown_name,
    validate_tree,
)
from densekit.config.method_steps import (
    BUILD_ARCHS,
    BuildConfig,
    QuerySpeedConfig,
    ReportConfig,
    SelectConfig,
    SpeedConfig,
    TrainsetConfig,
)
from densekit.config.retrieval import (
    INDEX_TYPES,
    PRECISIONS,
    STORAGE_DTYPES,
    TEACHER_KINDS,
    EncodeConfig,
    EvaluateConfig,
    IndexConfig,
    MineConfig,
    RerankConfig,
    ScoreConfig,
    SearchConfig,
    TeacherConfig,
)
from densekit.config.training import (
    SEARCH_SAMPLERS,
    EvalConfig,
    OptimConfig,
    RetrievedConfig,
    TrainConfig,
    TrainDataConfig,
    TuneConfig,
)
from densekit.errors import ConfigError

__all__ = [
    "BUILD_ARCHS",
    "BuildConfig",
    "ConfigError",
    "EXPORT_FORMATS",
    "EncodeConfig",
    "EvalConfig",
    "EvaluateConfig",
    "ExportConfig",
    "FOREIGN_NAMES",
    "GenerateConfig",
    "IMPORT_FORMATS",
    "INDEX_TYPES",
    "ImportConfig",
    "IndexConfig",
    "LossConfig",
    "MISSING",
    "MODEL_KINDS",
    "MineConfig",
    "ModelConfig",
    "OptimConfig",
    "PRECISIONS",
    "QuerySpeedConfig",
    "RerankConfig",
    "ReportConfig",
    "ResourcesConfig",
    "RetrievedConfig",
    "SEARCH_SAMPLERS",
    "STORAGE_DTYPES",
    "ScoreConfig",
    "SearchConfig",
    "SelectConfig",
    "SpeedConfig",
    "TEACHER_KINDS",
    "TeacherConfig",
    "TrainConfig",
    "TrainDataConfig",
    "TrainsetConfig",
    "TuneConfig",
    "describe_fields",
    "load_config",
    "missing_keys",
    "opt",
    "unknown_name",
    "validate_tree",
]
