"""ModelConfig / LossConfig load from YAML (typos caught) and build the model they describe."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from densekit.config import LossConfig, ModelConfig, load_config, opt
from densekit.errors import ConfigError
from densekit.losses import build_objective
from densekit.models import ModelSpec, build_model, model_from_config


@dataclasses.dataclass
class _TrainLike:
    model: ModelConfig = opt(ModelConfig, "the student")
    losses: dict[str, LossConfig] = opt({}, "the objective")


def test_student_from_teacher_layers_in_a_config(tmp_path, deep_bert_dir):
    build_model(ModelSpec(pooling="mean"), deep_bert_dir).save(tmp_path / "teacher")
    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        f"model:\n  path: {tmp_path / 'teacher'}\n  student_layers: [0, 3]\n"
        "losses:\n  kl_distill: {weight: 0.9, params: {temperature: 4.0}}\n  nll: {weight: 0.1}\n"
    )
    cfg = load_config(_TrainLike, yaml)
    model = model_from_config(cfg.model)
    assert model.num_layers == 2 and model.spec.layer_map == [0, 3] and model.spec.pooling == "mean"
    assert model.spec.teacher == str(tmp_path / "teacher")
    objective = build_objective(cfg.losses)
    assert objective.weights == {"kl_distill": 0.9, "nll": 0.1}
    with pytest.raises(ConfigError, match="Did you mean 'weight'"):
        load_config(_TrainLike, yaml, ["losses.nll.wieght=2"])
    with pytest.raises(ConfigError, match="Did you mean 'student_layers'"):
        load_config(_TrainLike, yaml, ["model.student_layer=[1]"])


def test_model_config_validation_and_plain_encoders(deep_bert_dir):
    with pytest.raises(ConfigError, match="unknown model kind 'colbret'.*Did you mean 'colbert'"):
        load_config(ModelConfig, None, [f"path={deep_bert_dir}", "kind=colbret"])
    with pytest.raises(ConfigError, match="set only one of student_layers, student_num_layers"):
        load_config(
            ModelConfig,
            None,
            [f"path={deep_bert_dir}", "student_layers=[0]", "student_num_layers=2"],
        )
    cfg = load_config(
        ModelConfig,
        None,
        [f"path={deep_bert_dir}", "kind=colbert", "colbert_dim=8", "student_num_layers=2"],
    )
    model = model_from_config(cfg)
    assert model.kind == "colbert" and model.dim == 8 and model.spec.layer_map == [0, 1]
    enc = model.tokenize_passages(["dense retrieval"])
    assert model.encode_passages(**enc)[0].shape[-1] == 8
    assert isinstance(model.encode_passages(**enc)[0], torch.Tensor)
