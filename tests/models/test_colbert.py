"""ColBERT: MaxSim equals a Python loop, padded document tokens never score, [MASK] augmentation,
markers, save/load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from densekit.data.collate import TrainCollator
from densekit.models import ColBERT, ModelSpec, build_model, load_model
from densekit.models.colbert import maxsim


def maxsim_loop(q, qm, d, dm):
    B, N = q.shape[0], d.shape[0]
    out = torch.zeros(B, N)
    for b in range(B):
        for n in range(N):
            total = 0.0
            for i in range(q.shape[1]):
                if not qm[b, i]:
                    continue
                best = max(float(q[b, i] @ d[n, j]) for j in range(d.shape[1]) if dm[n, j])
                total += best
            out[b, n] = total
    return out


def test_maxsim_equals_a_python_loop():
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(2, 4, 5, generator=g), torch.randn(3, 6, 5, generator=g)
    qm = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    dm = torch.tensor(
        [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool
    )
    torch.testing.assert_close(maxsim(q, qm, d, dm), maxsim_loop(q, qm, d, dm))
    # a padded token with a huge similarity must not win the max
    d2 = d.clone()
    d2[0, 3] = 100 * q[0, 0]
    torch.testing.assert_close(maxsim(q, qm, d2, dm), maxsim(q, qm, d, dm))


def test_query_augmentation_pads_with_mask_tokens(arch_dirs, data):
    model = build_model(
        ModelSpec(kind="colbert", max_query_length=12, colbert_dim=8), arch_dirs["bert"]
    )
    enc = model.tokenize_queries(["dense retrieval", data.queries[0]])
    tok = model.query_tower.tokenizer
    assert enc["input_ids"].shape == (2, 12)
    ids, att, tm = enc["input_ids"][0], enc["attention_mask"][0], enc["token_mask"][0]
    n_real = int(att.sum())
    assert (ids[n_real:] == tok.mask_token_id).all() and n_real < 12
    assert tm.all()  # [MASK] tokens score
    off = load_model_colbert_without_aug(model)
    assert off.tokenize_queries(["dense retrieval"])["input_ids"].shape[1] == n_real


def load_model_colbert_without_aug(model):
    return ColBERT(model.spec.replace(query_augmentation=False), model.query_tower)


def test_markers_go_after_cls(arch_dirs):
    model = build_model(
        ModelSpec(kind="colbert", query_marker="fox", doc_marker="dog", colbert_dim=8),
        arch_dirs["bert"],
    )
    tok = model.query_tower.tokenizer
    q = model.tokenize_queries(["dense retrieval"])["input_ids"][0]
    d = model.tokenize_passages(["dense retrieval"])["input_ids"][0]
    assert q[0] == tok.cls_token_id and q[1] == tok.convert_tokens_to_ids("fox")
    assert (
        d[1] == tok.convert_tokens_to_ids("dog")
        and d.shape[0] == len(tok("dense retrieval")["input_ids"]) + 1
    )
    bad = build_model(ModelSpec(kind="colbert", query_marker="[unused0]"), arch_dirs["bert"])
    with pytest.raises(
        ValueError, match=r"marker token '\[unused0\]' is not in the tokenizer's vocabulary"
    ):
        bad.tokenize_queries(["x"])


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_forward_scores_and_round_trip(tmp_path, arch_dirs, data, arch):
    model = build_model(
        ModelSpec(kind="colbert", colbert_dim=8, max_query_length=10), arch_dirs[arch]
    ).eval()
    batch = TrainCollator(3, negatives="descend")(data.make_groups(n_neg=2))
    with torch.no_grad():
        out = model(batch, candidates="global")
        grp = model(batch, candidates="group")
        q, qm = model.encode_queries(**model.tokenize_queries(batch.query_texts))
        d, dm = model.encode_passages(
            **model.tokenize_passages(batch.passage_texts, batch.passage_titles)
        )
    assert out.query_emb.shape == (3, 10, 8) and out.passage_emb.shape[0] == 9
    torch.testing.assert_close(out.scores, maxsim_loop(q, qm, d, dm), atol=1e-5, rtol=1e-5)
    for i in range(3):
        torch.testing.assert_close(grp.scores[i], out.scores[i, 3 * i : 3 * i + 3])
    # tokens are unit vectors, padding is zero
    norms = out.passage_emb.norm(dim=-1)
    torch.testing.assert_close(norms[out.passage_mask], torch.ones(int(out.passage_mask.sum())))
    assert (norms[~out.passage_mask] == 0).all()
    model.save(tmp_path / "cb")
    AutoModel.from_pretrained(str(tmp_path / "cb"))
    loaded = load_model(tmp_path / "cb")
    assert isinstance(loaded, ColBERT) and loaded.spec.colbert_dim == 8
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).scores, out.scores)


def test_a_document_scores_the_same_alone_and_padded(arch_dirs, data):
    model = build_model(ModelSpec(kind="colbert", colbert_dim=8), arch_dirs["bert"]).eval()
    q, qm = model.encode_queries(**model.tokenize_queries(data.queries[:1]))
    with torch.no_grad():
        short_alone = model.encode_passages(**model.tokenize_passages(["dense retrieval"]))
        both = model.encode_passages(
            **model.tokenize_passages(["dense retrieval", data.passages[6]])
        )
        s1 = maxsim(q, qm, *short_alone)[0, 0]
        s2 = maxsim(q, qm, both[0], both[1])[0, 0]
    assert both[1][0].sum() < both[1][1].sum()  # the short one really is padded
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)
