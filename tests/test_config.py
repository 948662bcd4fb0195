"""load_config: YAML + dotted overrides into typed dataclasses, failing early and clearly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Optional

import pytest

from densekit.config import MISSING, ConfigError, GenerateConfig, describe_fields, load_config, opt


@dataclass
class Inner:
    weight: float = opt(1.0, "weight")
    params: Dict[str, float] = opt({}, "params")  # noqa: UP006


@dataclass
class Optim:
    lr: float = opt(1e-4, "learning rate")
    steps: int = opt(10, "steps")


@dataclass
class Demo:
    path: str = opt(MISSING, "a required path")
    mode: Literal["a", "b"] = opt("a", "a mode")
    optim: Optim = opt(Optim, "optimiser")
    losses: Dict[str, Inner] = opt({}, "losses by name")  # noqa: UP006
    layers: list = opt([0, 11], "layers")
    note: Optional[str] = opt(None, "a note")


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_then_overrides(tmp_path):
    p = write(tmp_path, "path: /x\noptim: {lr: 0.5}\nlosses: {kl: {weight: 2.0}}\n")
    cfg = load_config(Demo, p, ["optim.steps=3", "losses.kl.params.temperature=4", "layers=[1,2]"])
    assert isinstance(cfg, Demo) and isinstance(cfg.optim, Optim)
    assert (cfg.path, cfg.optim.lr, cfg.optim.steps) == ("/x", 0.5, 3)
    assert isinstance(cfg.losses["kl"], Inner)
    assert cfg.losses["kl"].weight == 2.0 and cfg.losses["kl"].params == {"temperature": 4.0}
    assert cfg.layers == [1, 2]


def test_tilde_removes_an_entry_of_a_mapping(tmp_path):
    # A loss set in the YAML can be dropped on the command line (`~losses.kl`), then others set.
    p = write(tmp_path, "path: /x\nlosses: {kl: {weight: 2.0}, nll: {weight: 0.1}}\n")
    cfg = load_config(Demo, p, ["~losses.kl", "losses.nll.weight=1.0"])
    assert list(cfg.losses) == ["nll"] and cfg.losses["nll"].weight == 1.0
    assert set(load_config(Demo, p).losses) == {"kl", "nll"}
    # A dataclass field always has a value: removing it is refused, as is removing nothing.
    with pytest.raises(ConfigError, match=r"~optim\.lr.*cannot be removed \(set it: optim\.lr=\.\.\.\)"):
        load_config(Demo, p, ["~optim.lr"])
    with pytest.raises(ConfigError, match=r"there is no 'losses\.mse' to remove"):
        load_config(Demo, p, ["~losses.mse"])


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.stepz'.*Did you mean 'steps'"):
        load_config(Demo, None, ["path=x", "optim.stepz=3"])
    p = write(tmp_path, "path: x\n")
    with pytest.raises(ConfigError, match=r"^override: unknown config key 'optim.stepz'"):
        load_config(Demo, p, ["optim.stepz=3"])
    p = write(tmp_path, "path: x\noptm: {lr: 1}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'optm'.*Did you mean 'optim'"):
        load_config(Demo, p)


def test_unknown_key_inside_mapping_value():
    with pytest.raises(ConfigError, match=r"losses.kl.wieght.*Did you mean 'weight'"):
        load_config(Demo, None, ["path=x", "losses.kl.wieght=2"])


def test_wrong_type():
    with pytest.raises(ConfigError, match=r"invalid value for 'optim.steps'"):
        load_config(Demo, None, ["path=x", "optim.steps=abc"])
    with pytest.raises(ConfigError, match=r"invalid value for 'mode'"):
        load_config(Demo, None, ["path=x", "mode=c"])


def test_missing_required(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required value\(s\): path"):
        load_config(Demo, write(tmp_path, "mode: b\n"))
    # Allowed for checks (configs with ??? placeholders, run --dry-run).
    merged = load_config(Demo, write(tmp_path, "mode: b\n"), allow_missing=True)
    assert merged.mode == "b"


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Demo, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Demo, write(tmp_path, "path: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Demo, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Demo, None, ["path"])


def test_validate_hook_runs():
    with pytest.raises(ConfigError, match="unknown format 'msmarco_colection'.*Did you mean 'msmarco_collection'"):
        from densekit.config import ImportConfig

        load_config(ImportConfig, None, ["format=msmarco_colection", "path=x", "output=y"])


def test_describe_fields_recurses():
    rows = {r[0]: r for r in describe_fields(Demo)}
    assert rows["optim.lr"][2] == "0.0001" and rows["optim.lr"][3] == "learning rate"
    assert rows["path"][2] == "(required)"
    assert "seed" in {r[0] for r in describe_fields(GenerateConfig)}


@pytest.mark.parametrize("override, expected", [
    ("optim.learning_rate=1e-4", "densekit's is optim.lr"),
    ("learning_rate=1e-4", "densekit's is optim.lr"),
    ("per_device_train_batch_size=8", "densekit's is optim.batch_size"),
    ("num_train_epochs=3", "densekit's is optim.max_steps"),
    ("warmup_ratio=0.1", "densekit's is optim.warmup_steps"),
    ("model_name_or_path=x", "densekit's is model.path"),
    ("optim.lrr=1", "Did you mean 'lr'?"),
])
def test_hugging_face_names_point_to_densekit_keys(override, expected):
    from densekit.config import TrainConfig

    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["model.path=m", "data.train=t", "output=o", override])
    assert expected in str(e.value)


def test_a_foreign_name_is_not_pointed_at_a_key_the_step_lacks():
    from densekit.config import IndexConfig

    with pytest.raises(ConfigError) as e:
        load_config(IndexConfig, None, ["embeddings=e", "output=o", "learning_rate=1"])
    assert "optim.lr" not in str(e.value)


def test_misspelt_loss_parameter_fails_at_once_before_the_model_path(tmp_path):
    """A misspelt loss parameter is reported first, in well under 2 s, though the model path is
    wrong too and no model is loaded; a loss without parameters says so."""
    import time

    from densekit.config import TrainConfig
    from densekit.train import train

    cfg = load_config(TrainConfig, None, [
        f"model.path={tmp_path / 'no-such-model'}", f"data.train={tmp_path / 'no-such-table'}",
        f"output={tmp_path / 'out'}", "losses={kl_distill: {params: {tempreature: 2.0}}}",
    ])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"unknown parameter 'tempreature'. Did you mean 'temperature'\?"):
        train(cfg)
    assert time.perf_counter() - t0 < 2.0
    cfg = load_config(TrainConfig, None, [
        f"model.path={tmp_path}", f"data.train={tmp_path}", f"output={tmp_path / 'out'}",
        "losses={margin_mse: {params: {temperature: 2.0}}}",
    ])
    with pytest.raises(ConfigError, match="margin_mse takes no parameters"):
        train(cfg)


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=-1", "optim.lr=-1.0"),
    ("optim.lr=0", "optim.lr=0.0"),
    ("optim.batch_size=0", "optim.batch_size=0"),
    ("optim.max_steps=0", "optim.max_steps=0"),
    ("optim.grad_accum=0", "optim.grad_accum=0"),
    ("optim.warmup_steps=-5", "optim.warmup_steps=-5"),
    ("optim.max_grad_norm=0", "optim.max_grad_norm=0"),
])
def test_training_settings_are_checked_when_loaded(override, expected):
    """Caught on loading, before Ray starts (they used to end in a torch traceback, or after three
    Ray Train attempts)."""
    from densekit.config import TrainConfig

    with pytest.raises(ConfigError, match="invalid training settings") as e:
        load_config(TrainConfig, None, ["model.path=m", "data.train=t", "output=o", override])
    assert expected in str(e.value)


def test_a_corpus_table_as_training_groups_is_refused_before_ray(tmp_path):
    from densekit.artifacts import TableWriter, write_manifest
    from densekit.config import TrainConfig
    from densekit.data import records as R
    from densekit.errors import InputError
    from densekit.models.tiny import build_tiny_model
    from densekit.train import train

    corpus = tmp_path / "corpus"
    with TableWriter(corpus, R.CORPUS_SCHEMA) as w:
        w.write({R.PID: ["d1"], R.TEXT: ["a b"], R.TITLE: [""]})
    write_manifest(corpus, "test")
    model = build_tiny_model(tmp_path / "m", ["a b c"] * 4, layers=1, hidden=16, heads=2, intermediate=32)
    cfg = load_config(TrainConfig, None, [f"model.path={model}", f"data.train={corpus}", f"output={tmp_path / 'o'}",
                                          "losses={contrastive: {}}"])
    with pytest.raises(InputError, match="expected a training-groups table"):
        train(cfg)
    cfg = load_config(TrainConfig, None, [f"model.path={model}", f"data.train={corpus}", "data.group_size=0",
                                          f"output={tmp_path / 'o'}", "losses={embedding_mse: {}}",
                                          f"teacher.path={model}"])
    with pytest.raises(InputError, match="expected a queries table"):
        train(cfg)
    assert not (tmp_path / "o").exists()
