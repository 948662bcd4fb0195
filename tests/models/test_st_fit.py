"""A densekit model folder in plain sentence-transformers: the same passage embeddings as densekit's
encode step when passages are passed as docs/models-and-losses.md says (title + " " + text, the
"document" prompt); and a plain Hugging Face folder that does not say its pooling is refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from densekit.data import records as R
from densekit.errors import ConfigError
from densekit.models import ModelSpec, build_model, load_model
from densekit_testdata import PASSAGES

TITLES = ["Foxes", "", "A very long title about dogs and cats and their habits", "Rivers"]


def _passages(n: int) -> tuple[list[str], list[str]]:
    texts = [PASSAGES[i % len(PASSAGES)] for i in range(n)]
    titles = [TITLES[i % len(TITLES)] for i in range(n)]
    return texts, titles


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(pooling="mean", similarity="cosine", max_passage_length=64),
        ModelSpec(pooling="cls", max_passage_length=64, passage_prefix="passage: ", query_prefix="query: "),
        ModelSpec(pooling="mean", head_dim=16, normalize=True, max_passage_length=64),
    ],
    ids=["mean-cosine", "cls-dot-prompts", "mean-head-normalised"],
)
def test_sentence_transformers_gives_densekits_passage_embeddings(tmp_path, arch_dirs, spec):
    from sentence_transformers import SentenceTransformer

    from densekit.pipelines.encode import ROW, TextEncoder

    model = build_model(spec, arch_dirs["bert"]).eval()
    with torch.no_grad():  # away from the initial weights, so a wrongly loaded module would show
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = tmp_path / "m"
    model.save(folder)

    texts, titles = _passages(12)
    batch = {ROW: np.arange(len(texts)), R.ID: np.array([f"d{i}" for i in range(len(texts))], dtype=object),
             R.TEXT: np.array(texts, dtype=object), R.TITLE: np.array(titles, dtype=object)}
    ours = TextEncoder(str(folder), "passages", batch_size=5)(batch)[R.EMBEDDING]  # the encode step's actor

    st = SentenceTransformer(str(folder), device="cpu")
    joined = [f"{ti} {t}" if ti else t for ti, t in zip(titles, texts)]  # as the docs say
    theirs = st.encode(joined, prompt_name="document" if spec.passage_prefix else None,
                       convert_to_numpy=True, batch_size=7)
    assert theirs.shape == ours.shape
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cos.min() >= 0.9999, cos
    if spec.normalized:
        np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)
    else:  # dot-product models: the same lengths too, not only directions
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    if spec.passage_prefix:  # encode_document (sentence-transformers >= 5) applies the prompt itself
        if hasattr(st, "encode_document"):
            doc = st.encode_document(joined, convert_to_numpy=True)
            np.testing.assert_allclose(doc, theirs, rtol=1e-4, atol=1e-5)


def test_plain_hf_folder_without_pooling_is_refused(tmp_path, arch_dirs):
    plain = tmp_path / "plain"
    shutil.copytree(arch_dirs["bert"], plain)
    shutil.rmtree(plain / "1_Pooling")
    with pytest.raises(ConfigError) as e:
        load_model(plain)
    msg = str(e.value)
    assert str(plain) in msg and "model.pooling=cls or model.pooling=mean" in msg and "1_Pooling" in msg
    # An explicit pooling is enough; ColBERT and cross-encoders do not pool.
    assert load_model(plain, overrides={"pooling": "mean"}).spec.pooling == "mean"
    assert load_model(plain, kind="cross_encoder").spec.kind == "cross_encoder"
    # A pooling file says it too.
    (plain / "1_Pooling").mkdir()
    (plain / "1_Pooling" / "config.json").write_text('{"pooling_mode": "mean"}')
    model = load_model(plain)
    assert model.spec.pooling == "mean" and model.spec.similarity == "dot"


def test_built_models_say_their_pooling(arch_dirs):
    """`densekit build` output (build_tiny_model) loads as before: CLS, dot."""
    spec = load_model(arch_dirs["bert"]).spec
    assert (arch_dirs["bert"] / "1_Pooling" / "config.json").is_file()
    assert spec.pooling == "cls" and spec.similarity == "dot" and not spec.normalized
