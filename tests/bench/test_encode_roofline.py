"""bench/encode.py's linear-layer roofline (issue #19: encode's share of it): the layers it counts,
the tokens and the seconds, against counts made by hand from the model's config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from densekit.models.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_encode", ROOT / "bench" / "encode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    texts = ["dense retrieval with a small student", "a teacher scores the passages"] * 20
    return str(build_tiny_model(tmp_path_factory.mktemp("m") / "model", texts, layers=3, hidden=32,
                                heads=2, intermediate=48, pooling="mean"))


def test_the_linear_layers_are_those_a_token_passes_through(bench, model):
    # A BERT layer: query, key, value and attention output (h x h), then h -> intermediate -> h.
    # The pooler (one token a text) is not counted.
    shapes = bench.linear_shapes(model)
    per_layer = [(32, 32)] * 4 + [(32, 48), (48, 32)]
    assert sorted(shapes) == sorted(per_layer * 3)


def test_roofline_seconds_are_flops_over_the_measured_speed_of_each_shape(bench):
    shapes = [(4, 8), (8, 4), (4, 8)]
    flops = {(4, 8): 1e3, (8, 4): 4e3}
    # 10 tokens: 2 * 10 * 32 FLOPs per layer; two layers at 1e3 FLOP/s, one at 4e3.
    assert bench.roofline_seconds(shapes, 10, flops) == pytest.approx(2 * 640 / 1e3 + 640 / 4e3)


def test_tokens_are_counted_after_truncation_without_padding(bench, model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    short, long = "a teacher", " ".join(["dense retrieval"] * 50)
    n_short = len(tok(short)["input_ids"])
    assert n_short < 16 < len(tok(long)["input_ids"])
    assert bench.count_tokens(model, [short, long], max_length=16) == n_short + 16


def test_a_matmul_speed_is_measured_eager_and_compiled(bench):
    flops = bench.matmul_flops((64, 32), tokens=256, repeats=2)
    assert set(flops) == {"eager", "compiled"}
    assert all(1e6 < f < 1e15 for f in flops.values())
