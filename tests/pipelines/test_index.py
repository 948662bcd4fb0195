"""index: one FAISS shard per embedding shard with its pid map and manifest, trained types trained
once and shared, a rerun rebuilding only missing shards; approximate types' recall@100 measured."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from densekit.artifacts import read_manifest
from densekit.config import IndexConfig, load_config
from densekit.errors import ConfigError
from densekit.pipelines.index import index, new_index, shard_dir
from densekit.pipelines.search import ShardedSearcher


def _cfg(emb, out, *overrides):
    return load_config(IndexConfig, overrides=[f"embeddings={emb}", f"output={out}", *overrides])


@pytest.mark.ray
def test_flat_shards_pid_maps_and_resume(tmp_path, ray_session, write_embeddings):
    x = np.random.default_rng(0).normal(size=(1000, 16)).astype("float32")
    emb = write_embeddings(tmp_path / "emb", x, rows_per_part=300)  # 4 shards: 300, 300, 300, 100
    out = tmp_path / "index"
    index(_cfg(emb, out))
    m = read_manifest(out)
    assert (m["factory"], m["dim"], m["metric"], m["ntotal"]) == ("Flat", 16, "ip", 1000)
    assert m["model_fingerprint"] == "fp-A"
    assert [s["ntotal"] for s in m["shards"]] == [300, 300, 300, 100]
    pids = []
    for i in range(4):
        d = shard_dir(out, i)
        sm = read_manifest(d)
        assert (sm["factory"], sm["metric"], sm["model_fingerprint"], sm["shard"]) == ("Flat", "ip", "fp-A", i)
        shard = faiss.read_index(str(d / "index.faiss"))
        ids = pq.read_table(d / "ids.parquet").column("id").to_pylist()
        # Row j of the shard index is the vector of pid ids[j].
        rows = np.array([int(p[1:]) for p in ids])
        np.testing.assert_array_equal(shard.reconstruct_n(0, shard.ntotal), x[rows])
        pids += ids
    assert sorted(pids) == sorted(f"p{i}" for i in range(1000))

    # Resume: remove one shard; a rerun rebuilds it and leaves the others alone.
    before = {i: (shard_dir(out, i) / "index.faiss").stat().st_mtime_ns for i in range(4)}
    import shutil

    shutil.rmtree(shard_dir(out, 2))
    (out / "_manifest.json").unlink()
    index(_cfg(emb, out))
    after = {i: (shard_dir(out, i) / "index.faiss").stat().st_mtime_ns for i in range(4)}
    assert [before[i] == after[i] for i in range(4)] == [True, True, False, True]
    assert read_manifest(out)["ntotal"] == 1000


@pytest.mark.ray
def test_approximate_types_recall_at_100(tmp_path, ray_session, write_embeddings, make_clustered):
    x = make_clustered(4000, 32, clusters=24, seed=1)
    q = make_clustered(50, 32, clusters=24, seed=2)
    emb = write_embeddings(tmp_path / "emb", x, rows_per_part=1000)
    exact = faiss.IndexFlatIP(32)
    exact.add(x)
    _, truth = exact.search(q, 100)
    recalls = {}
    settings = {"IVF32,Flat": {"nprobe": 6}, "IVF32,PQ8": {"nprobe": 6}, "HNSW16": {"ef_search": 128}}
    for factory, params in settings.items():
        out = tmp_path / factory.replace(",", "_")
        index(_cfg(emb, out, f"factory='{factory}'", "train_size=2000"))
        with ShardedSearcher(out, num_actors=2, **params) as searcher:
            _, pids = searcher.search(q, 100)
        got = np.vectorize(lambda p: -1 if p is None else int(p[1:]))(pids)
        recalls[factory] = np.mean([len(set(g) & set(t)) / 100 for g, t in zip(got, truth)])
        if factory.startswith("IVF"):
            # Trained once: every shard carries the very same coarse centroids as trained.faiss.
            cents = _centroids(faiss.read_index(str(out / "trained.faiss")))
            for i in range(4):
                shard = faiss.read_index(str(shard_dir(out, i) / "index.faiss"))
                np.testing.assert_array_equal(_centroids(shard), cents)
    print("\nrecall@100 vs exact search (4000 x 32, 4 shards):", json.dumps(recalls))
    assert recalls["IVF32,Flat"] > 0.8
    assert recalls["HNSW16"] > 0.8
    assert recalls["IVF32,PQ8"] > 0.4  # 8 bytes per 32-dim vector: coarse by design


def _centroids(index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)  # a view: `index` must stay alive while it is used
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_factory_errors():
    with pytest.raises(ConfigError, match="Did you mean 'IVF'"):
        load_config(IndexConfig, overrides=["embeddings=e", "output=o", "factory='IFV100,Flat'"])
    with pytest.raises(ConfigError, match="FAISS cannot build it"):
        new_index("IVF16,PQ7", 32, "ip")  # 7 sub-quantizers do not divide 32 dims


def test_float16_storage_round_trip():
    from densekit.data import records as R
    from densekit.pipelines.embeddings import embeddings_batch, to_matrix

    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    batch = embeddings_batch(["a", "b", "c", "d", "e"], x, "float16")
    assert batch.schema.field(R.EMBEDDING).type.value_type == "halffloat"
    back = to_matrix(batch.column(1))
    assert back.dtype == np.float32 and back.shape == (5, 8)
    np.testing.assert_array_equal(back, x.astype(np.float16).astype(np.float32))
