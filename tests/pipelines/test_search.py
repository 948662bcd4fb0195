"""search: sharded Flat search equals one IndexFlatIP (ids and scores), returned vectors equal the
indexed ones, the step writes the run table and TREC file, refuses another model's queries unless
asymmetric, and a dead actor is restarted or fails the search loudly (never a missing shard)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from densekit.artifacts import read_manifest, read_table
from densekit.config import IndexConfig, SearchConfig, load_config
from densekit.data import records as R
from densekit.errors import ConfigError
from densekit.pipelines.index import index
from densekit.pipelines.search import SearchActorError, ShardedSearcher, search

N, DIM = 2500, 24


@pytest.fixture
def flat_index(tmp_path, ray_session, write_embeddings):
    """A 5-shard Flat index over N distinct Gaussian vectors (pids p0..p{N-1}, shuffled order)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, DIM)).astype("float32")
    order = rng.permutation(N)  # pid order unrelated to row order: the pid maps must do the work
    emb = write_embeddings(tmp_path / "emb", x[order], ids=[f"p{i}" for i in order], rows_per_part=600)
    out = tmp_path / "index"
    index(load_config(IndexConfig, overrides=[f"embeddings={emb}", f"output={out}"]))
    return out, x


def _reference(x: np.ndarray, q: np.ndarray, k: int):
    ref = faiss.IndexFlatIP(x.shape[1])
    ref.add(x)
    scores, rows = ref.search(q, k)
    # Distinct vectors; make sure no two scores tie at the cut (the test would be ambiguous).
    full = np.sort(q @ x.T, axis=1)[:, ::-1]
    assert (full[:, k - 1] - full[:, k] > 1e-5).all()
    return scores, rows


@pytest.mark.ray
def test_sharded_flat_equals_one_flat_index(flat_index):
    out, x = flat_index
    q = np.random.default_rng(1).normal(size=(40, DIM)).astype("float32")
    ref_scores, ref_rows = _reference(x, q, 50)
    with ShardedSearcher(out, num_actors=2) as searcher:
        scores, pids, vectors = searcher.search(q, 50, return_vectors=True)
        rows = np.vectorize(lambda p: int(p[1:]))(pids)
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(vectors, x[rows])  # reconstructed from the Flat shards
        # In-process (num_actors=0, what a training worker uses): the same answer.
        with ShardedSearcher(out, num_actors=0) as local:
            l_scores, l_pids, l_vectors = local.search(q, 50, return_vectors=True)
        np.testing.assert_array_equal(l_pids, pids)
        np.testing.assert_array_equal(l_scores, scores)
        np.testing.assert_array_equal(l_vectors, vectors)
        # More than the whole index: every vector once, then empty slots.
        scores, pids = searcher.search(q[:3], N + 4)
        assert sorted(int(p[1:]) for p in pids[0, :N]) == list(range(N))
        assert list(pids[0, N:]) == [None] * 4 and np.isneginf(scores[0, N:]).all()


@pytest.mark.ray
def test_search_step_run_table_trec_and_model_check(tmp_path, flat_index, write_embeddings, write_table,
                                                    tiny_model_dir):
    out, x = flat_index
    q = np.random.default_rng(2).normal(size=(30, DIM)).astype("float32")
    ref_scores, ref_rows = _reference(x, q, 20)
    qids = [f"q{i}" for i in range(30)]
    qemb = write_embeddings(tmp_path / "qemb", q, ids=qids, rows_per_part=7)
    cfg = load_config(SearchConfig, overrides=[
        f"index={out}", f"query_embeddings={qemb}", f"output={tmp_path / 'run'}", "k=20",
        "batch_size=8", "resources.num_workers=2"])
    search(cfg)
    run = read_table(tmp_path / "run").to_pydict()
    assert read_manifest(tmp_path / "run")["rows"] == 30 * 20
    assert run[R.QID] == [q for q in qids for _ in range(20)]
    assert run[R.RANK] == list(range(1, 21)) * 30
    np.testing.assert_array_equal(np.array([int(p[1:]) for p in run[R.PID]]).reshape(30, 20), ref_rows)
    np.testing.assert_allclose(np.array(run[R.SCORE]).reshape(30, 20), ref_scores, rtol=1e-6)
    lines = (tmp_path / "run" / "_run.trec").read_text().splitlines()
    assert len(lines) == 600
    qid, q0, pid, rank, score, tag = lines[21].split()
    assert (qid, q0, pid, rank, tag) == ("q1", "Q0", f"p{ref_rows[1, 1]}", "2", "densekit")
    assert float(score) == pytest.approx(ref_scores[1, 1], rel=1e-6)

    # Queries from another model: refused, unless asymmetric retrieval is asked for.
    other = write_embeddings(tmp_path / "qemb_b", q, ids=qids, fingerprint="fp-B", model="student")
    cfg_b = load_config(SearchConfig, overrides=[
        f"index={out}", f"query_embeddings={other}", f"output={tmp_path / 'run_b'}", "k=5"])
    with pytest.raises(ConfigError, match="asymmetric=true"):
        search(cfg_b)
    search(load_config(SearchConfig, overrides=[
        f"index={out}", f"query_embeddings={other}", f"output={tmp_path / 'run_b'}", "k=5",
        "asymmetric=true"]))
    assert read_manifest(tmp_path / "run_b")["asymmetric"] is True

    # queries + model: a model mismatch is refused before any query is encoded.
    qtable = write_table(tmp_path / "queries", R.QUERIES_SCHEMA, {R.QID: qids, R.TEXT: ["q"] * 30})
    cfg_m = load_config(SearchConfig, overrides=[
        f"index={out}", f"queries={qtable}", f"model={tiny_model_dir}", f"output={tmp_path / 'run_m'}"])
    with pytest.raises(ConfigError, match="asymmetric=true"):
        search(cfg_m)
    assert not (tmp_path / "run_m").exists()


@pytest.mark.ray
def test_dead_actor_is_restarted_or_fails_loudly(flat_index):
    import ray

    out, x = flat_index
    q = np.random.default_rng(3).normal(size=(10, DIM)).astype("float32")
    ref_scores, ref_rows = _reference(x, q, 10)
    with ShardedSearcher(out, num_actors=2, max_restarts=1) as searcher:
        ray.kill(searcher.actors[0], no_restart=False)  # the process dies; Ray restarts it
        scores, pids = searcher.search(q, 10)
        np.testing.assert_array_equal(np.vectorize(lambda p: int(p[1:]))(pids), ref_rows)
    with ShardedSearcher(out, num_actors=2, max_restarts=0) as searcher:
        ray.kill(searcher.actors[1], no_restart=False)
        with pytest.raises(SearchActorError, match="died"):
            searcher.search(q, 10)


@pytest.mark.ray
def test_l2_index(tmp_path, ray_session, write_embeddings):
    x = np.random.default_rng(4).normal(size=(300, 8)).astype("float32")
    emb = write_embeddings(tmp_path / "emb", x, rows_per_part=100, metric="l2")
    index(load_config(IndexConfig, overrides=[f"embeddings={emb}", f"output={tmp_path / 'ix'}"]))
    q = np.random.default_rng(5).normal(size=(5, 8)).astype("float32")
    ref = faiss.IndexFlatL2(8)
    ref.add(x)
    dist, rows = ref.search(q, 7)
    with ShardedSearcher(tmp_path / "ix", num_actors=1) as searcher:
        scores, pids = searcher.search(q, 7)
    np.testing.assert_array_equal(np.vectorize(lambda p: int(p[1:]))(pids), rows)
    np.testing.assert_allclose(scores, -dist, rtol=1e-5)  # higher is better: negated distances


@pytest.mark.ray
def test_ivf_shards_assign_each_query_once_and_equal_one_ivf_index(tmp_path, ray_session, write_embeddings,
                                                                   make_clustered):
    """IVF shards trained once share their coarse quantizer: an actor assigns each query to its lists
    once for all its shards. The answer equals one IVF index (the same trained.faiss) holding every
    vector, searched with the same nprobe: same ids, same scores."""
    from densekit.pipelines.index import shard_dir, shard_ids
    from densekit.pipelines.search import _ShardGroup

    x = make_clustered(3000, 32, clusters=20, seed=3)
    q = make_clustered(60, 32, clusters=20, seed=4)
    emb = write_embeddings(tmp_path / "emb", x, ids=[f"p{i}" for i in range(len(x))], rows_per_part=500)
    out = tmp_path / "ivf"
    index(load_config(IndexConfig, overrides=[f"embeddings={emb}", f"output={out}", "factory='IVF24,Flat'",
                                              "train_size=2000"]))
    n_shards = len(read_manifest(out)["shards"])
    assert n_shards >= 4
    # The reference: trained.faiss filled with every vector in the shards' row order.
    ref = faiss.read_index(str(out / "trained.faiss"))
    order = [int(p[1:]) for i in range(n_shards) for p in shard_ids(shard_dir(out, i)).to_pylist()]
    ref.add(x[order])
    faiss.extract_index_ivf(ref).nprobe = 5
    ref_scores, ref_rows = ref.search(q, 20)
    ref_pids = np.array([[f"p{order[r]}" for r in row] for row in ref_rows], dtype=object)

    with ShardedSearcher(out, num_actors=0, nprobe=5) as local:
        assert local.local.coarse is not None and local.local.coarse[1] == 5  # the shared path is taken
        scores, pids = local.search(q, 20)
    np.testing.assert_array_equal(pids, ref_pids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    with ShardedSearcher(out, num_actors=2, nprobe=5) as searcher:
        a_scores, a_pids = searcher.search(q, 20)
    np.testing.assert_array_equal(a_pids, ref_pids)
    np.testing.assert_allclose(a_scores, ref_scores, rtol=1e-5, atol=1e-5)
    # Each shard searched on its own (no shared assignment) gives the same answer.
    group = _ShardGroup(str(out), local.groups[0], "IVF24,Flat", "ip", True, 5, None, 1)
    group.coarse = None
    alone = group.search(q, 20, False)
    np.testing.assert_array_equal(np.asarray(alone["pids"].to_pylist(), dtype=object).reshape(60, 20), ref_pids)


def test_shared_coarse_quantizer_only_for_ivf_shards_trained_together():
    from densekit.pipelines.index import shared_coarse_quantizer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype("float32")
    trained = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    trained.train(x)
    a, b = (faiss.deserialize_index(faiss.serialize_index(trained)) for _ in range(2))
    a.add(x[:1000])
    b.add(x[1000:])
    quantizer, nprobe = shared_coarse_quantizer([a, b])
    np.testing.assert_array_equal(quantizer.reconstruct_n(0, 8), faiss.extract_index_ivf(a).quantizer.reconstruct_n(0, 8))
    assert nprobe == 1
    apart = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    apart.train(x[::-1].copy())  # other centroids
    assert shared_coarse_quantizer([a, apart]) is None
    faiss.extract_index_ivf(b).nprobe = 3
    assert shared_coarse_quantizer([a, b]) is None  # different nprobe
    assert shared_coarse_quantizer([a]) is None  # one shard: nothing to share
    assert shared_coarse_quantizer([faiss.IndexFlatIP(16), faiss.IndexFlatIP(16)]) is None
    wrapped = faiss.index_factory(16, "PCA16,IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    wrapped.train(x)
    assert shared_coarse_quantizer([wrapped, wrapped]) is None  # queries must be transformed first
