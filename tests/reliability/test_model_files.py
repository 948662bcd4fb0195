"""Never accept a broken model (issue #17): a model folder that lacks its weights, config.json or
tokenizer is refused by every step that takes a model, before Ray starts, with one message naming
the folder and what is missing. (Without tokenizer.json, encode used to fall back to a tokenizer
with an empty vocabulary: every word [UNK], exit 0.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, is_complete, write_manifest
from densekit.cli import STEPS
from densekit.config import load_config
from densekit.data import records as R
from densekit.errors import DensekitError
from densekit_testdata import PASSAGES


class RayStarted(AssertionError):
    """A step started Ray although its model was already known to be broken."""


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise RayStarted("the step started Ray before refusing its broken model")

    monkeypatch.setattr("densekit.raycluster.init_ray", refuse)


def _table(directory: Path, schema: pa.Schema, columns: dict) -> Path:
    with TableWriter(directory, schema) as w:
        w.write(pa.table(columns, schema=schema))
    write_manifest(directory, "test")
    return directory


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    texts = list(PASSAGES)[:12]
    corpus = _table(root / "corpus", R.CORPUS_SCHEMA, {R.PID: [f"p{i}" for i in range(len(texts))],
                                                         R.TEXT: texts, R.TITLE: [""] * len(texts)})
    groups = _table(root / "groups", R.GROUPS_SCHEMA, {
        R.QID: ["q0", "q1"], R.QUERY: texts[:2],
        R.POSITIVES: [[R.passage(f"p{i}", texts[i], "", 1.0)] for i in (2, 3)],
        R.NEGATIVES: [[R.passage(f"p{i}", texts[i], "", 0.0)] for i in (4, 5)]})
    return {"corpus": corpus, "groups": groups}


def _separate_towers(tiny_model_dir: Path, to: Path) -> Path:
    from densekit.models import build_model
    from densekit.models.spec import ModelSpec

    build_model(ModelSpec(shared=False, pooling="cls"), tiny_model_dir).save(to)
    return to


BREAK = {
    # case: (files removed, words the message must hold)
    "no tokenizer": (["tokenizer.json", "vocab.txt"], ["tokenizer"]),
    "no weights": (["model.safetensors"], ["weights", "model.safetensors"]),
    "no config": (["config.json"], ["config.json"]),
    "separate towers, passage tokenizer missing": (["passage/tokenizer.json", "passage/vocab.txt"],
                                                   ["passage/", "tokenizer"]),
}


def _broken(case: str, tiny_model_dir: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    if case.startswith("separate"):
        _separate_towers(tiny_model_dir, model)
    else:
        shutil.copytree(tiny_model_dir, model)
    for name in BREAK[case][0]:
        (model / name).unlink(missing_ok=True)
    return model


STEP_ARGS = {
    "encode": ["model={model}", "input={corpus}", "output={out}"],
    "score": ["groups={groups}", "teachers=[{{model: '{model}'}}]", "output={out}"],
    "train": ["model.path={model}", "data.train={groups}", "data.group_size=2", "losses.contrastive.weight=1",
              "optim.batch_size=2", "optim.max_steps=1", "output={out}"],
    "speed": ["models=['{model}']", "input={corpus}", "output={out}"],
}
CASES = [(case, "encode") for case in BREAK] + [("no tokenizer", s) for s in ("score", "train", "speed")] + [("no weights", "train")]


@pytest.mark.parametrize("case,step", CASES, ids=[f"{s}: {c}" for c, s in CASES])
def test_incomplete_model_folder_is_refused_before_ray(case, step, inputs, tiny_model_dir, tmp_path, no_ray, tally):
    model = _broken(case, tiny_model_dir, tmp_path)
    values = {**inputs, "model": model, "out": tmp_path / "out"}
    overrides = [a.format(**values) for a in STEP_ARGS[step]]
    with pytest.raises(DensekitError) as e:
        cfg = load_config(STEPS[step].config_cls(), None, overrides)
        STEPS[step].function()(cfg)
    tally.bad_input(f"model folder with {case} ({step})")
    msg = str(e.value)
    assert str(model) in msg and "missing" in msg, msg
    for word in BREAK[case][1]:
        assert word in msg, msg
    assert not is_complete(tmp_path / "out")


def test_load_model_names_what_is_missing(tiny_model_dir, tmp_path):
    """The same check where a model is loaded (in actors and Train workers too)."""
    from densekit.models import load_model

    model = _broken("no tokenizer", tiny_model_dir, tmp_path)
    with pytest.raises(DensekitError, match=r"not a complete model folder: missing the tokenizer"):
        load_model(model)


def test_a_complete_model_folder_still_loads(tiny_model_dir, tmp_path):
    from densekit.models import check_model_files, load_model, missing_model_files

    assert missing_model_files(tiny_model_dir) == []
    check_model_files(tiny_model_dir)
    towers = _separate_towers(tiny_model_dir, tmp_path / "towers")
    assert missing_model_files(towers) == []
    load_model(towers)
