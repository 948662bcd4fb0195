"""Per-layer views (LEAD): layer index 0 is the first transformer layer's output (HF's
hidden_states[1]); DE = dot of layer-i CLS vectors, ColBERT = MaxSim over normalised layer-i
token states, CE = the shared head on layer-i CLS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModel

from densekit.data.collate import TrainCollator
from densekit.models import ModelSpec, build_model
from densekit.models.colbert import maxsim


def _hf_layers(path, enc):
    hf = AutoModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return hf(
            **enc, output_hidden_states=True
        ).hidden_states  # (embeddings, layer 0, layer 1, ...)


def test_bi_encoder_layer_scores(deep_bert_dir, data):
    model = build_model(ModelSpec(pooling="cls"), deep_bert_dir).eval()
    batch = TrainCollator(2, negatives="descend")(data.make_groups(n_neg=1))
    with torch.no_grad():
        out = model(batch, candidates="global", output_layers=True)
    assert out.layer_scores.shape == (4, 3, 6) and out.layer_ids == [0, 1, 2, 3]
    qh = _hf_layers(deep_bert_dir, model.tokenize_queries(batch.query_texts))
    ph = _hf_layers(
        deep_bert_dir, model.tokenize_passages(batch.passage_texts, batch.passage_titles)
    )
    for i in range(4):
        torch.testing.assert_close(out.layer_scores[i], qh[i + 1][:, 0] @ ph[i + 1][:, 0].T)
    # without a head, the last layer's view is the model's own score
    torch.testing.assert_close(out.layer_scores[-1], out.scores)
    grp = model(batch, candidates="group", output_layers=True)
    for i in range(3):
        torch.testing.assert_close(
            grp.layer_scores[:, i], out.layer_scores[:, i, 2 * i : 2 * i + 2]
        )


def test_colbert_layer_scores(deep_bert_dir, data):
    model = build_model(
        ModelSpec(kind="colbert", colbert_dim=8, max_query_length=10), deep_bert_dir
    ).eval()
    batch = TrainCollator(2, negatives="descend")(data.make_groups(n_neg=1))
    with torch.no_grad():
        out = model(batch, candidates="global", output_layers=True)
    q_enc = model.tokenize_queries(batch.query_texts)
    p_enc = model.tokenize_passages(batch.passage_texts, batch.passage_titles)
    qh = _hf_layers(deep_bert_dir, {k: v for k, v in q_enc.items() if k != "token_mask"})
    ph = _hf_layers(deep_bert_dir, {k: v for k, v in p_enc.items() if k != "token_mask"})
    qm, pm = q_enc["token_mask"].bool(), p_enc["token_mask"].bool()
    for i in range(4):
        expected = maxsim(F.normalize(qh[i + 1], dim=-1), qm, F.normalize(ph[i + 1], dim=-1), pm)
        torch.testing.assert_close(out.layer_scores[i], expected, atol=1e-5, rtol=1e-5)


def test_cross_encoder_layer_scores_use_the_shared_head(deep_bert_dir, data):
    model = build_model(ModelSpec(kind="cross_encoder"), deep_bert_dir).eval()
    batch = TrainCollator(2, negatives="descend")(data.make_groups(n_neg=1))
    with torch.no_grad():
        out = model(batch, output_layers=True)
    enc = model.tokenize_pairs(
        [q for q in batch.query_texts for _ in range(2)], batch.passage_texts, batch.passage_titles
    )
    hs = _hf_layers(deep_bert_dir, enc)
    head = model.query_tower.head
    with torch.no_grad():
        for i in range(4):
            torch.testing.assert_close(out.layer_scores[i], head(hs[i + 1][:, 0]).view(3, 2))
    torch.testing.assert_close(out.layer_scores[-1], out.scores)
