"""Bi-encoder: scores equal embedding dot products, save/load round trips through HF and
sentence-transformers, sentence-transformers directories load with their own pooling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from densekit.data.collate import TrainCollator
from densekit.errors import ConfigError
from densekit.models import BiEncoder, ModelSpec, build_model, load_model
from densekit_testdata import PASSAGES, QUERIES


@pytest.fixture
def bert(arch_dirs):
    return arch_dirs["bert"]


def _batch(model, data, G=3):
    return TrainCollator(G, negatives="descend", tokenizations=[model.tokenization])(
        data.make_groups(n_neg=G - 1)
    )


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_scores_are_embedding_dot_products(arch_dirs, data, arch):
    model = build_model(ModelSpec(pooling="mean", head_dim=8), arch_dirs[arch]).eval()
    batch = _batch(model, data)
    with torch.no_grad():
        out = model(batch, candidates="global")
        grp = model(batch, candidates="group")
    B, G = len(QUERIES), 3
    assert out.scores.shape == (B, B * G) and grp.scores.shape == (B, G)
    torch.testing.assert_close(out.scores, out.query_emb @ out.passage_emb.T)
    # group scores are each query's own block of the global matrix, positive first
    for i in range(B):
        torch.testing.assert_close(grp.scores[i], out.scores[i, i * G : (i + 1) * G])
    assert out.candidates.target.tolist() == [0, 3, 6]
    # encode_* (the pipelines' API) give the same vectors as forward
    with torch.no_grad():
        q = model.encode_queries(**model.tokenize_queries(batch.query_texts))
    torch.testing.assert_close(q, out.query_emb)


def test_cls_pooling_matches_automodel_after_save(tmp_path, bert):
    from transformers import AutoModel, AutoTokenizer

    model = build_model(ModelSpec(pooling="cls"), bert).eval()
    model.save(tmp_path / "m")
    hf = AutoModel.from_pretrained(str(tmp_path / "m")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    enc = tok(PASSAGES[:4], padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        expected = hf(**enc).last_hidden_state[:, 0]
        got = load_model(tmp_path / "m").encode_passages(**enc)
    torch.testing.assert_close(got, expected)
    spec = json.loads((tmp_path / "m" / "densekit_model.json").read_text())
    assert spec["kind"] == "bi_encoder" and spec["pooling"] == "cls"


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(pooling="cls"),
        ModelSpec(pooling="mean", normalize=True, similarity="cosine"),
        ModelSpec(pooling="cls", head_dim=12, head_layernorm=True),  # STAR's RobertaDot head
        ModelSpec(pooling="mean", head_dim=48, query_prefix="query: ", passage_prefix="passage: "),
    ],
    ids=["cls", "mean-cos", "head-ln", "head-prompts"],
)
def test_sentence_transformers_loads_the_save(tmp_path, bert, spec):
    from sentence_transformers import SentenceTransformer

    model = build_model(spec, bert).eval()
    # random heads are near-identity at init; perturb so a wrongly loaded head would show
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path / "m")
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    with torch.no_grad():
        ours_q = model.encode_queries(**model.tokenize_queries(QUERIES))
        ours_p = model.encode_passages(**model.tokenize_passages(PASSAGES))
        reloaded = load_model(tmp_path / "m").encode_passages(**model.tokenize_passages(PASSAGES))
    st_q = st.encode(
        QUERIES, prompt_name="query" if spec.query_prefix else None, convert_to_tensor=True
    )
    st_p = st.encode(
        PASSAGES, prompt_name="document" if spec.passage_prefix else None, convert_to_tensor=True
    )
    torch.testing.assert_close(st_q, ours_q, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(st_p, ours_p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reloaded, ours_p)


def test_loads_a_sentence_transformers_directory(tmp_path, bert):
    """A directory written by sentence-transformers itself (mean pooling + Dense + Normalize)."""
    from sentence_transformers import SentenceTransformer, models

    tr = models.Transformer(str(bert), max_seq_length=64)
    st = SentenceTransformer(
        modules=[
            tr,
            models.Pooling(32, pooling_mode="mean"),
            models.Dense(32, 8, activation_function=torch.nn.Identity()),
            models.Normalize(),
        ],
        device="cpu",
    )
    st.save(str(tmp_path / "st"))
    model = load_model(tmp_path / "st")
    assert isinstance(model, BiEncoder)
    assert (
        model.spec.pooling,
        model.spec.normalized,
        model.spec.head_dim,
        model.spec.max_passage_length,
    ) == ("mean", True, 8, 64)
    with torch.no_grad():
        ours = model.encode_passages(**model.tokenize_passages(PASSAGES))
    torch.testing.assert_close(
        ours, st.encode(PASSAGES, convert_to_tensor=True), atol=1e-5, rtol=1e-4
    )


# The real model where `get-real-models` staged it: $DENSEKIT_MODELS, or .models/ in the repository
# (the real tier's default). CI has no real models (nothing is downloaded in tests): skipped there.
MINILM = (
    Path(os.environ.get("DENSEKIT_MODELS", Path(__file__).resolve().parents[2] / ".models"))
    / "all-MiniLM-L6-v2"
)


@pytest.mark.skipif(
    not MINILM.is_dir(), reason="all-MiniLM-L6-v2 not staged ($DENSEKIT_MODELS or .models/)"
)
def test_minilm_loads_with_its_pooling():
    from sentence_transformers import SentenceTransformer

    model = load_model(MINILM)
    assert (model.spec.pooling, model.spec.normalized, model.spec.max_passage_length) == (
        "mean",
        True,
        256,
    )
    with torch.no_grad():
        ours = model.encode_passages(
            **model.tokenize_passages(PASSAGES, titles=["a title"] + [""] * 7)
        )
    ref = SentenceTransformer(str(MINILM), device="cpu").encode(
        ["a title " + PASSAGES[0]] + PASSAGES[1:], convert_to_tensor=True
    )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_separate_towers_save_in_subfolders(tmp_path, bert):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    model = build_model(ModelSpec(shared=False, pooling="cls"), bert).eval()
    with torch.no_grad():
        for p in model.passage_tower.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "query" / "model.safetensors").is_file() and (
        tmp_path / "m" / "passage" / "config.json"
    ).is_file()
    AutoModel.from_pretrained(str(tmp_path / "m" / "passage"))
    loaded = load_model(tmp_path / "m")
    q_enc, p_enc = loaded.tokenize_queries(QUERIES), loaded.tokenize_passages(QUERIES)
    with torch.no_grad():
        q, p = loaded.encode_queries(**q_enc), loaded.encode_passages(**p_enc)
        assert not torch.allclose(q, p)  # the towers really differ
        torch.testing.assert_close(p, model.encode_passages(**p_enc))
    st_p = SentenceTransformer(str(tmp_path / "m" / "passage"), device="cpu").encode(
        QUERIES, convert_to_tensor=True
    )
    torch.testing.assert_close(st_p, p, atol=1e-5, rtol=1e-4)


def test_plain_hf_directory_is_a_cls_dot_bi_encoder(bert):
    model = load_model(bert)
    assert (
        isinstance(model, BiEncoder) and model.spec.pooling == "cls" and not model.spec.normalized
    )
    model = load_model(bert, overrides={"pooling": "mean", "max_query_length": 8})
    assert model.tokenize_queries(["a b c d e f g h i j k l"])["input_ids"].shape[1] == 8


def test_titles_join_as_the_spec_says(bert):
    model = load_model(bert)
    prefix = model.tokenize_passages(["the fox"], titles=["dog"])["input_ids"][0].tolist()
    plain = model.tokenize_passages(["dog the fox"])["input_ids"][0].tolist()
    assert prefix == plain
    pair = load_model(bert, overrides={"title_mode": "pair"}).tokenize_passages(
        ["the fox"], titles=["dog"]
    )
    sep = model.query_tower.tokenizer.sep_token_id
    assert pair["input_ids"][0].tolist().count(sep) == 2 and pair["token_type_ids"][0].max() == 1


def test_errors_name_the_problem(tmp_path, bert):
    with pytest.raises(ConfigError, match="Did you mean 'colbert'"):
        load_model(bert, kind="colbret")
    model = build_model(ModelSpec(), bert)
    model.save(tmp_path / "m")
    with pytest.raises(ConfigError, match="holds a bi_encoder model, but a cross_encoder"):
        load_model(tmp_path / "m", kind="cross_encoder")
    with pytest.raises(ConfigError, match="unknown pooling 'max'"):
        ModelSpec(pooling="max").validate()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a model directory"):
        load_model(tmp_path / "empty")


def test_gradients_reach_both_towers(bert, data):
    model = build_model(ModelSpec(shared=False), bert).train()
    out = model(_batch(model, data), candidates="global")
    F.cross_entropy(out.scores, out.candidates.target).backward()
    for name in ("query", "passage"):
        grads = [p.grad for p in model.towers[name].parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name


def test_our_sentence_transformers_files_alone_reload_the_model(tmp_path, bert):
    """Without densekit_model.json and densekit_head.safetensors, the ST files give the same model."""
    spec = ModelSpec(
        pooling="mean", head_dim=12, head_layernorm=True, normalize=True, max_passage_length=64
    )
    model = build_model(spec, bert).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path / "m")
    (tmp_path / "m" / "densekit_model.json").unlink()
    (tmp_path / "m" / "densekit_head.safetensors").unlink()
    st_model = load_model(tmp_path / "m")
    assert (
        st_model.spec.head_dim,
        st_model.spec.head_layernorm,
        st_model.spec.max_passage_length,
    ) == (12, True, 64)
    with torch.no_grad():
        enc = model.tokenize_passages(PASSAGES)
        torch.testing.assert_close(st_model.encode_passages(**enc), model.encode_passages(**enc))


def test_save_is_atomic(tmp_path, bert, monkeypatch):
    model = build_model(ModelSpec(), bert)

    def fail(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(ModelSpec, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "m")
    assert (
        list(tmp_path.iterdir()) == []
    )  # nothing half-written that would load as a plain HF model
