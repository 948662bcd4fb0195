"""Cross-encoder: a linear head on the CLS of `[CLS] q [SEP] d [SEP]`, group scores, save/load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from densekit.data.collate import TrainCollator
from densekit.models import CrossEncoder, ModelSpec, build_model, load_model


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_score_is_linear_head_on_cls(tmp_path, arch_dirs, data, arch):
    model = build_model(ModelSpec(kind="cross_encoder"), arch_dirs[arch]).eval()
    model.save(tmp_path / "ce")
    hf = AutoModel.from_pretrained(str(tmp_path / "ce")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ce"))
    enc = model.tokenize_pairs(data.queries, data.passages[:3])
    ids = enc["input_ids"][0].tolist()
    # [CLS] q [SEP] d [SEP] (RoBERTa-style tokenizers use their own CLS/SEP)
    assert ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2
    with torch.no_grad():
        h = hf(**{k: v for k, v in enc.items()}).last_hidden_state[:, 0]  # [N, H]
        head = model.query_tower.head.linear
        expected = h @ head.weight[0] + head.bias[0]
        torch.testing.assert_close(
            load_model(tmp_path / "ce").score_pairs(**enc), expected, atol=1e-5, rtol=1e-5
        )


def test_forward_scores_each_group(arch_dirs, data):
    model = build_model(ModelSpec(kind="cross_encoder"), arch_dirs["bert"]).eval()
    batch = TrainCollator(3, negatives="descend", tokenizations=[model.tokenization])(
        data.make_groups(n_neg=2)
    )
    with torch.no_grad():
        out = model(batch)
        flat = model.score_pairs(
            **model.tokenize_pairs(
                [q for q in batch.query_texts for _ in range(3)],
                batch.passage_texts,
                batch.passage_titles,
            )
        )
    assert out.scores.shape == (3, 3) and out.mode == "group"
    torch.testing.assert_close(out.scores, flat.view(3, 3))
    with pytest.raises(ValueError, match="own group only"):
        model(batch, candidates="global")


def test_cross_encoder_has_one_tower(arch_dirs):
    with pytest.raises(ValueError, match="one tower"):
        build_model(ModelSpec(kind="cross_encoder", shared=False), arch_dirs["bert"])
    assert isinstance(load_model(arch_dirs["bert"], kind="cross_encoder"), CrossEncoder)


def test_a_cross_encoder_starts_from_a_sentence_transformers_directory(tmp_path, arch_dirs, data):
    """PROD's CEs start from pretrained sentence encoders: the ST folder's transformer, a new head."""
    from sentence_transformers import SentenceTransformer, models

    st = SentenceTransformer(modules=[models.Transformer(str(arch_dirs["bert"]), max_seq_length=64),
                                      models.Pooling(32, pooling_mode="mean"), models.Normalize()],
                             device="cpu")
    st.save(str(tmp_path / "st"))
    torch.manual_seed(0)
    ce = load_model(tmp_path / "st", kind="cross_encoder")
    assert isinstance(ce, CrossEncoder)
    hf = AutoModel.from_pretrained(str(tmp_path / "st")).eval()
    enc = ce.tokenize_pairs(data.queries, data.passages[:3])
    with torch.no_grad():
        h = hf(**enc).last_hidden_state[:, 0]  # the ST transformer's own weights under the head
        head = ce.query_tower.head.linear
        torch.testing.assert_close(ce.score_pairs(**enc), h @ head.weight[0] + head.bias[0], atol=1e-5, rtol=1e-5)
    assert load_model(tmp_path / "st").kind == "bi_encoder"  # without a kind it stays the bi-encoder
