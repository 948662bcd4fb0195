"""`densekit speed`: every model measured on the same texts in one Ray task; the first is the
reference (speed-up 1), the others are compared with it."""

from __future__ import annotations

import json

import pytest

from densekit.artifacts import TableWriter, read_manifest, write_manifest
from densekit.config import SpeedConfig, load_config
from densekit.data.records import QUERIES_SCHEMA
from densekit.errors import ConfigError
from densekit.pipelines.speed import speed

pytestmark = pytest.mark.ray


def test_speed_compares_models(tmp_path, tiny_model_dir, tiny_texts, ray_session):
    from densekit.models.tiny import build_tiny_model

    deep = build_tiny_model(tmp_path / "deep", [], layers=4, hidden=32, tokenizer_from=tiny_model_dir)
    queries = tmp_path / "queries"
    with TableWriter(queries, QUERIES_SCHEMA) as w:
        w.write({"qid": [f"q{i}" for i in range(40)], "text": [tiny_texts[i % 8] for i in range(40)]})
    write_manifest(queries, "test")
    out = tmp_path / "speed"
    cfg = load_config(SpeedConfig, None, [f"models=[{deep},{tiny_model_dir}]", f"input={queries}", f"output={out}",
                                          "max_texts=32", "batch_size=8", "repeats=2"])
    speed(cfg)
    read_manifest(out)
    result = json.loads((out / "speed.json").read_text())
    assert result["kind"] == "queries" and result["texts"] == 32 and result["reference"] == str(deep)
    ref, other = result["models"]
    assert (ref["layers"], other["layers"]) == (4, 2)
    assert ref["speedup"] == 1.0
    for m in (ref, other):
        assert m["texts_per_s"] == pytest.approx(32 / m["seconds"])
    assert other["speedup"] == pytest.approx(other["texts_per_s"] / ref["texts_per_s"])


def test_speed_refuses_a_cross_encoder_and_empty_models(tmp_path, tiny_model_dir, ray_session):
    from densekit.models import load_model

    ce = tmp_path / "ce"
    load_model(tiny_model_dir, kind="cross_encoder").save(ce)
    queries = tmp_path / "queries"
    with TableWriter(queries, QUERIES_SCHEMA) as w:
        w.write({"qid": ["q0"], "text": ["a query"]})
    write_manifest(queries, "test")
    cfg = load_config(SpeedConfig, None, [f"models=[{ce}]", f"input={queries}", f"output={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match="cross_encoder"):
        speed(cfg)
    with pytest.raises(ConfigError, match="models is empty"):
        load_config(SpeedConfig, None, [f"input={queries}", "output=x"])
