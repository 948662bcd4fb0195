"""Compiled inference (densekit.models.compiled): a torch.compile'd encoder with frozen weights
gives the eager encoder's embeddings, for every batch shape; a compile that fails falls back to
the eager model with one warning; `compile: null` (auto) compiles only large CPU inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from densekit.models.compiled import (
    COMPILE_MIN_FLOPS,
    COMPILE_MIN_TEXTS,
    CompiledInference,
    compile_wanted,
    text_flops,
)
from densekit.pipelines.text_encoder import TextEncoder
from densekit_testdata import needs_cxx

TEXTS = [
    "dense retrieval trains small query and passage encoders",
    "a cross encoder teacher scores each pair",
    "hard negatives are mined from faiss index of the corpus",
    "margin mse distils score",
    "quick brown fox jumps over lazy dog " * 6,
    "layer wise distillation aligns",
    "positive negative",
] * 3


@needs_cxx
def test_compiled_encoder_equals_eager(tiny_model_dir):
    eager = TextEncoder(str(tiny_model_dir), "passages", batch_size=4)
    compiled = TextEncoder(str(tiny_model_dir), "passages", batch_size=4, compile=True)
    assert isinstance(compiled._run, CompiledInference)
    # 21 texts in batches of 4: batch sizes 4 and 1, lengths from 3 to 43 tokens (dynamic shapes).
    got, ref = compiled.encode(TEXTS), eager.encode(TEXTS)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert not compiled._run.failed and compiled._run.calls == 6
    # Queries go through the query tower, compiled apart.
    q = TextEncoder(str(tiny_model_dir), "queries", batch_size=8, compile=True).encode(TEXTS[:9])
    np.testing.assert_allclose(q, TextEncoder(str(tiny_model_dir), "queries").encode(TEXTS[:9]),
                               rtol=1e-4, atol=1e-5)


def test_a_failed_compile_falls_back_to_eager(tiny_model_dir, caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    enc = TextEncoder(str(tiny_model_dir), "passages", batch_size=8)
    ref = enc.encode(TEXTS)
    enc._run = CompiledInference(enc.model.encode_passages, "the passages encoder", backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="densekit.models.compiled"):
        got = enc.encode(TEXTS)
    np.testing.assert_array_equal(got, ref)  # the eager model itself: bit for bit
    assert enc._run.failed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "compiling the passages encoder failed" in warnings[0]
    assert "no compiler here" in warnings[0] and "eager model" in warnings[0]


def test_a_genuine_error_is_not_swallowed(tiny_model_dir):
    enc = TextEncoder(str(tiny_model_dir), "passages", compile=True)
    with pytest.raises(ValueError, match="input_ids"):  # the caller's error, compiled or not
        enc._run(input_ids=None)
    assert not enc._run.failed


@pytest.mark.parametrize(
    ("setting", "texts", "gpu", "expected"),
    [
        (None, COMPILE_MIN_TEXTS, False, True),
        (None, COMPILE_MIN_TEXTS - 1, False, False),
        (None, 10 * COMPILE_MIN_TEXTS, True, False),  # GPU: only when asked
        (True, 10, False, True),
        (True, 10, True, True),
        (False, 10 * COMPILE_MIN_TEXTS, False, False),
    ],
)
def test_compile_wanted(setting, texts, gpu, expected):
    assert compile_wanted(setting, texts, gpu) is expected


@pytest.mark.parametrize(
    ("setting", "texts", "gpu", "expected"),
    [
        (None, 1_000, False, True),  # 1,000 texts of COMPILE_MIN_FLOPS / 1,000 each: enough work
        (None, 999, False, False),
        (None, 10 * COMPILE_MIN_TEXTS, True, False),  # GPU: only when asked
        (False, 10 * COMPILE_MIN_TEXTS, False, False),
        (True, 1, False, True),
    ],
)
def test_compile_wanted_by_work(setting, texts, gpu, expected):
    assert compile_wanted(setting, texts, gpu, flops_per_text=COMPILE_MIN_FLOPS / 1_000) is expected


def test_text_flops_counts_the_layers_weights_and_attention(tiny_model_dir):
    # Independently: 2 FLOPs per weight of the encoder layers' linear maps a token (as the model
    # itself holds them), and QK^T plus AV (2 x 2 x tokens x hidden a layer and token).
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_model_dir))
    weights = sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    for tokens in (8, 64):
        assert text_flops(tiny_model_dir, tokens) == tokens * (2 * weights + 4 * tokens * hidden * layers)
    assert text_flops(tiny_model_dir.parent, 8) is None  # no config.json: the texts rule applies


def test_encode_compiles_by_model_size_and_text_length(tmp_path):
    # The measured cases (docs/benchmarks.md): SciFact's abstracts (cut at 256 tokens) on 2 actors,
    # 2,592 an actor, through 6 layers of all-MiniLM-L6-v2's size (1.6x faster compiled) and
    # through its 2-layer cut (even): auto compiles the first only. Short texts are lighter work.
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from densekit.data import records as R
    from densekit.pipelines.text_encoder import estimated_tokens, text_work

    part = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table({R.PID: ["a", "b"], R.TITLE: ["t" * 99, None], R.TEXT: ["x" * 2000, "y" * 200]}), part)
    assert estimated_tokens(part, True, 256) == pytest.approx((256 + 200 / 4 + 2 + 1 / 4) / 2)
    assert estimated_tokens(part, False, 256) == pytest.approx((256 + 200 / 4 + 2) / 2)
    long = tmp_path / "long.parquet"
    pq.write_table(pa.table({R.PID: ["a"], R.TEXT: ["word " * 1000]}), long)
    decisions = {}
    for layers in (6, 2):
        model = tmp_path / f"minilm{layers}"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(
            {"model_type": "bert", "num_hidden_layers": layers, "hidden_size": 384, "intermediate_size": 1536}))
        flops = text_work(str(model), "passages", False, long, None)  # no spec: densekit's default 256
        assert flops == text_flops(model, 256)
        decisions[layers] = compile_wanted(None, 2_592, False, flops)
        assert text_work(str(model), "passages", False, long, 64) == text_flops(model, 64)  # max_length
    assert decisions == {6: True, 2: False}


@needs_cxx
def test_a_compiled_frozen_teacher_gives_the_same_outputs_and_its_student_trains(tiny_model_dir):
    """compile_frozen_towers (train's compile_teacher): the teacher's embeddings and per-layer views
    (LEAD) equal the eager teacher's, and a student's loss against them backpropagates (no_grad
    outputs, not inference tensors)."""
    import torch

    from densekit.models import load_model
    from densekit.models.compiled import compile_frozen_towers

    eager = load_model(str(tiny_model_dir), kind="bi_encoder").eval().requires_grad_(False)
    teacher = load_model(str(tiny_model_dir), kind="bi_encoder").eval().requires_grad_(False)
    compile_frozen_towers(teacher, "the teacher")
    forward = teacher.query_tower.transformer.forward
    assert isinstance(forward, CompiledInference)
    student = load_model(str(tiny_model_dir), kind="bi_encoder")
    for texts in (TEXTS[:5], TEXTS[5:12]):  # two batch shapes
        enc = teacher.tokenize_passages(texts)
        with torch.no_grad():
            got, got_layers = teacher._embed(teacher.passage_tower, enc, all_layers=True)
            want, want_layers = eager._embed(eager.passage_tower, enc, all_layers=True)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_layers, want_layers, rtol=1e-4, atol=1e-5)
        s = student.encode_passages(**enc)
        loss = ((s - got) ** 2).sum() + (s @ got.T).logsumexp(-1).sum()
        loss.backward()
    assert not forward.failed and forward.calls == 2
    trained = [p for p in student.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_a_compiled_model_caps_onednns_shape_caches_unless_the_user_set_them():
    # oneDNN keeps a primitive per input shape; uncapped, a compiled model actor's RSS grew with
    # the corpus (docs/benchmarks.md). The caps must be in the environment before the first
    # forward; a user's own value stays.
    import os
    import subprocess
    import sys

    code = (
        f"import os, sys; sys.path[:0] = {[p for p in sys.path if p]!r}\n"
        "from densekit.models.compiled import CompiledInference\n"
        "CompiledInference(lambda x: x, 'f', backend='eager')\n"
        "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["16", "16"]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "LRU_CACHE_CAPACITY": "300"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["16", "300"]
