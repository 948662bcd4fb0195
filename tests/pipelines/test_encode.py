"""encode: the batched, length-sorted encoder equals one-text-at-a-time encoding; the Ray pipeline
writes every pid exactly once in input order, shard by shard; a rerun skips complete shards; and on
a 2-node cluster, encode -> index -> search equals encoding and searching in one process."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from densekit.artifacts import read_manifest, read_table
from densekit.config import EncodeConfig, IndexConfig, SearchConfig, load_config
from densekit.data import records as R
from densekit.errors import ConfigError
from densekit.pipelines.embeddings import model_fingerprint
from densekit.pipelines.encode import TextEncoder, encode

N = 300


# Words of tests/conftest.py's TINY_TEXTS (the tiny tokenizer's training texts).
WORDS = ("dense retrieval trains small query and passage encoders a cross encoder teacher scores each "
         "pair hard negatives are mined from faiss index of the corpus margin mse distils score "
         "positive negative layer wise distillation aligns quick brown fox jumps over lazy dog").split()


def _texts(n: int, seed: int) -> list[str]:
    words = WORDS
    rng = np.random.default_rng(seed)
    # Lengths from 2 to 60 words: sorting and per-batch padding have something to do.
    return [" ".join(rng.choice(words, size=int(rng.integers(2, 60)))) for _ in range(n)]


@pytest.fixture
def corpus(tmp_path, write_table):
    texts = _texts(N, 0)
    titles = [None if i % 4 == 0 else f"title {i % 7}" for i in range(N)]
    pids = [f"p{i}" for i in range(N)]
    path = write_table(tmp_path / "corpus", R.CORPUS_SCHEMA,
                       {R.PID: pids, R.TEXT: texts, R.TITLE: titles}, rows_per_part=70)
    return path, pids, texts, titles


def _one_by_one(model_dir, texts, titles=None, queries=False) -> np.ndarray:
    """Reference: the model called on each text alone (no padding, no sorting, no Ray)."""
    from densekit.models import load_model

    model = load_model(model_dir, kind="bi_encoder")
    out = []
    with torch.inference_mode():
        for i, t in enumerate(texts):
            if queries:
                out.append(model.encode_queries(**model.tokenize_queries([t]))[0])
            else:
                ti = None if titles is None else [titles[i] or ""]
                out.append(model.encode_passages(**model.tokenize_passages([t], ti))[0])
    return torch.stack(out).numpy()


def test_text_encoder_batched_equals_one_by_one(tiny_model_dir, corpus):
    _, pids, texts, titles = corpus
    enc = TextEncoder(str(tiny_model_dir), "passages", batch_size=16)
    batch = {R.ID: np.array(pids[:64], dtype=object), R.TEXT: np.array(texts[:64], dtype=object),
             R.TITLE: np.array(titles[:64], dtype=object), "__row": np.arange(64)}
    out = enc(batch)
    ref = _one_by_one(tiny_model_dir, texts[:64], titles[:64])
    np.testing.assert_allclose(out[R.EMBEDDING], ref, rtol=1e-4, atol=1e-5)
    assert list(out[R.ID]) == pids[:64]
    # title=prepend joins "title text" itself; with the tiny model's spec (title_mode prefix,
    # separator " ") that is the same input.
    prepend = TextEncoder(str(tiny_model_dir), "passages", batch_size=16, title="prepend")(batch)
    np.testing.assert_allclose(prepend[R.EMBEDDING], ref, rtol=1e-4, atol=1e-5)
    ignore = TextEncoder(str(tiny_model_dir), "passages", batch_size=16, title="ignore")(batch)
    assert not np.allclose(ignore[R.EMBEDDING][1], ref[1])  # row 1 has a title


@pytest.mark.ray
def test_encode_every_pid_once_and_resume(tmp_path, ray_session, tiny_model_dir, corpus, caplog):
    path, pids, texts, titles = corpus
    out = tmp_path / "emb"
    cfg = load_config(EncodeConfig, overrides=[
        f"model={tiny_model_dir}", f"input={path}", f"output={out}", "rows_per_shard=64",
        "block_rows=50", "batch_size=16", "resources.num_workers=2"])
    encode(cfg)
    m = read_manifest(out)
    assert (m["count"], m["num_shards"], m["dim"], m["kind"], m["metric"]) == (N, 5, 32, "passages", "ip")
    assert m["model_fingerprint"] == model_fingerprint(tiny_model_dir)
    table = read_table(out)
    assert table.column(R.ID).to_pylist() == pids  # every pid once, in input order
    ref = _one_by_one(tiny_model_dir, texts, titles)
    np.testing.assert_allclose(np.array(table.column(R.EMBEDDING).to_pylist()), ref, rtol=1e-4, atol=1e-5)
    assert [m["files"][f"part-0000{i}.parquet"]["rows"] for i in range(5)] == [64, 64, 64, 64, 44]

    # Resume: shard 2 lost (and the manifest with it): only shard 2 is encoded again.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    (out / "part-00002.parquet").unlink()
    (out / "_manifest.json").unlink()
    # Another pool shape (resources do not change what is computed): one actor holding every CPU
    # of the cluster, which also checks that the read stage is fused into the actors (an unfused
    # read task would wait forever for a CPU). And a compiled encoder (compile=true; unset, 300
    # rows would not compile): only speed changes, so the shards it did not write stay valid.
    import dataclasses

    with caplog.at_level(logging.INFO, logger="densekit.pipelines.encode"):
        encode(dataclasses.replace(cfg, compile=True, resources=dataclasses.replace(
            cfg.resources, num_workers=1, cpus_per_worker=2.0)))
    assert any("compiled encoder on" in r.getMessage() for r in caplog.records)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert [mtimes[k] == after[k] for k in sorted(mtimes)] == [True, True, False, True, True]
    assert read_table(out).column(R.ID).to_pylist() == pids
    # Equal up to float noise: shard 2's rows were padded in other batches this time.
    np.testing.assert_allclose(np.array(read_table(out).column(R.EMBEDDING).to_pylist()),
                               np.array(table.column(R.EMBEDDING).to_pylist()), rtol=1e-4, atol=1e-6)
    # Complete: a third run (compile unset) does nothing at all.
    encode(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == after


def test_encode_refuses_a_cross_encoder(tmp_path, tiny_model_dir, corpus):
    from densekit.models.spec import ModelSpec

    ce = tmp_path / "ce"
    shutil.copytree(tiny_model_dir, ce)
    ModelSpec(kind="cross_encoder").save(ce)
    cfg = load_config(EncodeConfig, overrides=[f"model={ce}", f"input={corpus[0]}", f"output={tmp_path / 'e'}"])
    with pytest.raises(ConfigError, match="needs a bi-encoder"):
        encode(cfg)


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_encode_index_search(tmp_path, tiny_model_dir, corpus, write_table):
    """On a 2-node cluster: encode equals in-process encoding; sharded search equals IndexFlatIP."""
    import faiss
    import ray
    from ray.cluster_utils import Cluster

    from densekit.pipelines.index import index
    from densekit.pipelines.search import search

    path, pids, texts, titles = corpus
    qtexts = _texts(25, 1)
    qids = [f"q{i}" for i in range(25)]
    queries = write_table(tmp_path / "queries", R.QUERIES_SCHEMA, {R.QID: qids, R.TEXT: qtexts})
    ref_p = _one_by_one(tiny_model_dir, texts, titles)
    ref_q = _one_by_one(tiny_model_dir, qtexts, queries=True)

    ray.shutdown()  # the shared single-node session, if a test started it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        common = ["resources.num_workers=2", "resources.cpus_per_worker=0.5"]
        encode(load_config(EncodeConfig, overrides=[
            f"model={tiny_model_dir}", f"input={path}", f"output={tmp_path / 'emb'}",
            "rows_per_shard=80", "block_rows=40", "batch_size=16", *common]))
        table = read_table(tmp_path / "emb")
        got = table.column(R.ID).to_pylist()
        assert got == pids and len(set(got)) == N
        np.testing.assert_allclose(np.array(table.column(R.EMBEDDING).to_pylist()), ref_p,
                                   rtol=1e-4, atol=1e-5)
        index(load_config(IndexConfig, overrides=[
            f"embeddings={tmp_path / 'emb'}", f"output={tmp_path / 'index'}", *common]))
        search(load_config(SearchConfig, overrides=[
            f"index={tmp_path / 'index'}", f"queries={queries}", f"model={tiny_model_dir}",
            f"output={tmp_path / 'run'}", "k=10", *common]))
    finally:
        ray.shutdown()
        cluster.shutdown()
    flat = faiss.IndexFlatIP(ref_p.shape[1])
    flat.add(ref_p)
    ref_scores, ref_rows = flat.search(ref_q, 10)
    run = read_table(tmp_path / "run").to_pydict()
    got_rows = np.array([int(p[1:]) for p in run[R.PID]]).reshape(25, 10)
    # Scores of distinct texts rarely tie; where the reference has a near-tie, allow a swap.
    gaps = np.abs(np.diff(ref_scores, axis=1))
    tied = np.zeros_like(got_rows, dtype=bool)
    tied[:, 1:] |= gaps < 1e-4
    tied[:, :-1] |= gaps < 1e-4
    assert (got_rows[~tied] == ref_rows[~tied]).all()
    np.testing.assert_allclose(np.array(run[R.SCORE]).reshape(25, 10), ref_scores, rtol=1e-4, atol=1e-4)


def test_plan_assigns_every_row_to_one_shard(tmp_path, write_table):
    from densekit.pipelines.encode import _chunks, _plan

    n = 1000
    path = write_table(tmp_path / "c", R.CORPUS_SCHEMA, {R.PID: [f"p{i}" for i in range(n)],
                                                         R.TEXT: ["t"] * n, R.TITLE: [""] * n},
                       rows_per_part=333)
    files, slices, total = _plan(path, rows_per_shard=128)
    assert total == n and [f["rows"] for f in files] == [333, 333, 333, 1]
    for chunked in (slices, [c for s in slices for c in _chunks(s, 50)]):
        rows = np.concatenate([np.arange(s.first, s.first + s.stop - s.start) for s in chunked])
        assert sorted(rows.tolist()) == list(range(n))  # every input row exactly once
        assert all(s.first // 128 == (s.first + s.stop - s.start - 1) // 128 == s.shard for s in chunked)
        assert max(s.stop - s.start for s in chunked) <= (50 if chunked is not slices else 128)
