"""A frozen teacher's embeddings on disk (models.embed_cache): a cached read equals running the
model, skips it, and is never taken for another input, precision or model."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from densekit.data.collate import TrainCollator
from densekit.errors import ConfigError
from densekit.models import ModelSpec, build_model
from densekit.models.embed_cache import EmbedCache, attach, model_fingerprint


def _teacher(path):
    return build_model(ModelSpec(pooling="cls"), path).eval().requires_grad_(False)


def _count_tower_runs(model):
    """Wrap both towers' `hidden` to count how often the model itself runs."""
    calls = []
    for tower in {id(model.query_tower): model.query_tower, id(model.passage_tower): model.passage_tower}.values():
        inner = tower.hidden

        def hidden(enc, all_layers=False, _inner=inner):
            calls.append(1)
            return _inner(enc, all_layers)

        tower.hidden = hidden
    return calls


@pytest.fixture()
def batches(data):
    collate = TrainCollator(2, negatives="descend")
    groups = data.make_groups(n_neg=1)
    return collate(groups[:2]), collate(groups[1:3])


def test_a_cached_read_equals_running_the_model_and_skips_it(deep_bert_dir, batches, tmp_path):
    reference = _teacher(deep_bert_dir)
    teacher = _teacher(deep_bert_dir)
    assert attach(teacher, tmp_path / "cache", {"path": str(deep_bert_dir)}, deep_bert_dir, trainable=False)
    runs = _count_tower_runs(teacher)
    first, _ = batches
    with torch.no_grad():
        expected = reference(first, candidates="global", output_layers=True)
        written = teacher(first, candidates="global", output_layers=True)  # runs the model, keeps both towers
        assert len(runs) == 2 and teacher.embed_cache.misses == 2
        read = teacher(first, candidates="global", output_layers=True)  # read: the model does not run
    assert len(runs) == 2 and teacher.embed_cache.hits == 2
    for out in (written, read):
        assert torch.equal(out.scores, expected.scores)
        assert torch.equal(out.layer_scores, expected.layer_scores)
        assert torch.equal(out.query_emb, expected.query_emb) and torch.equal(out.passage_emb, expected.passage_emb)
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_another_batch_or_the_per_layer_flag_or_a_precision_is_another_entry(deep_bert_dir, batches, tmp_path):
    teacher = _teacher(deep_bert_dir)
    attach(teacher, tmp_path / "cache", {}, deep_bert_dir, trainable=False)
    first, second = batches
    with torch.no_grad():
        teacher(first, candidates="global")
        out = teacher(second, candidates="global")  # other texts: computed, not the first batch's
        ref = _teacher(deep_bert_dir)(second, candidates="global")
        assert torch.equal(out.scores, ref.scores)
        with_layers = teacher(first, candidates="global", output_layers=True)  # without layers kept: computed
        assert with_layers.layer_scores is not None
        assert teacher.embed_cache.hits == 0 and teacher.embed_cache.misses == 6
        teacher.double()
        out64 = teacher(first, candidates="global")
    assert out64.scores.dtype == torch.float64 and teacher.embed_cache.hits == 0


def test_gradients_on_means_no_cache(deep_bert_dir, batches, tmp_path):
    """A model that trains is never served from the cache (its embeddings change every step)."""
    model = build_model(ModelSpec(pooling="cls"), deep_bert_dir)
    attach(model, tmp_path / "cache", {}, deep_bert_dir, trainable=False)
    out = model(batches[0], candidates="global")
    assert out.scores.requires_grad
    assert model.embed_cache.hits == model.embed_cache.misses == 0 and not list((tmp_path / "cache").rglob("*.pt"))
    assert not attach(model, tmp_path / "c2", {}, deep_bert_dir, trainable=True)


def test_a_model_changed_in_place_or_configured_otherwise_gets_its_own_folder(deep_bert_dir, tmp_path):
    copy = tmp_path / "teacher"
    shutil.copytree(deep_bert_dir, copy)
    before = model_fingerprint({"pooling": "cls"}, copy)
    assert model_fingerprint({"pooling": "cls"}, copy) == before
    assert model_fingerprint({"pooling": "mean"}, copy) != before
    weights = next(p for p in copy.iterdir() if p.suffix == ".safetensors")
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # rewritten in place
    assert model_fingerprint({"pooling": "cls"}, copy) != before


def test_the_cache_folder_is_new_or_one_densekit_made(tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a teacher cache densekit made"):
        EmbedCache(users, "abc")
    assert (users / "notes.txt").read_text() == "keep me" and len(list(users.iterdir())) == 1
    (tmp_path / "empty").mkdir()
    EmbedCache(tmp_path / "empty", "abc")
    EmbedCache(tmp_path / "empty", "abc")  # made by densekit: reused
    with pytest.raises(ConfigError, match="not a teacher cache"):
        EmbedCache(users / "notes.txt", "abc")
