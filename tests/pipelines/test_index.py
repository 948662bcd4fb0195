"""index: one FAISS shard per embedding shard with its pid map and manifest, trained types trained
once and shared, a rerun rebuilding only missing shards; approximate types' recall@100 measured."""

from __future__ import annotations

import json
import re

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


@pytest.mark.ray
def test_training_task_gets_a_whole_node_not_one_builders_share(tmp_path, ray_session, write_embeddings,
                                                                 make_clustered, caplog):
    """k-means runs alone before the builders: by default it takes all the CPUs of the largest node
    (it used to run on cpus_per_worker, one thread on any cluster); train_cpus sets it; more CPUs
    than any node has is refused before any work."""
    import logging

    import ray

    from densekit.pipelines.index import training_cpus

    node_max = max(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    expected = float(int(node_max))  # the tests' local Ray: one node
    assert expected >= 2  # else this test could not tell a whole node from one builder's share
    emb = write_embeddings(tmp_path / "emb", make_clustered(1200, 16, clusters=8, seed=5), rows_per_part=400)
    assert training_cpus(_cfg(emb, tmp_path / "a")) == expected
    assert training_cpus(_cfg(emb, tmp_path / "a", "train_cpus=1")) == 1.0
    with pytest.raises(ConfigError, match="train_cpus=1000: no node"):
        training_cpus(_cfg(emb, tmp_path / "a", "train_cpus=1000"))
    with pytest.raises(ConfigError, match="train_cpus must be >= 1"):
        _cfg(emb, tmp_path / "a", "train_cpus=0")
    with caplog.at_level(logging.INFO, logger="densekit.pipelines.index"):
        index(_cfg(emb, tmp_path / "ivf", "factory='IVF8,Flat'", "train_size=800"))
    assert re.search(rf"training IVF8,Flat on 80[01] vectors \({int(expected)} threads\)", caplog.text)
    assert read_manifest(tmp_path / "ivf")["ntotal"] == 1200
