"""Index and search benchmark: densekit's parallel sharded build (one Ray task per shard) against
building one FAISS index over all vectors in one process, and search queries/s of ShardedSearcher
against one in-process index, with recall@k against exact search. Same vectors, same run.

    python bench/index_search.py --vectors 200000 --dim 128 --shards 4 --factory HNSW32
    python bench/index_search.py --factory IVF1024,PQ32 --nprobe 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts its workers at nice 15 (RayConfig worker_niceness); the baselines here run in this
# process at nice 0. On a loaded machine that alone would tilt the ratios: same priority for both.
os.environ.setdefault("RAY_worker_niceness", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import numpy as np  # noqa: E402


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around centres (real embeddings are clustered; uniform noise is the worst case)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_embeddings(directory: Path, x: np.ndarray, rows_per_part: int) -> Path:
    import pyarrow as pa

    from densekit.artifacts import TableWriter, write_manifest
    from densekit.data import records as R

    n, dim = x.shape
    with TableWriter(directory, R.embeddings_schema(dim), rows_per_part=rows_per_part) as w:
        for s in range(0, n, 65_536):
            chunk = x[s : s + 65_536]
            emb = pa.FixedSizeListArray.from_arrays(pa.array(chunk.reshape(-1)), dim)
            w.write(pa.table({R.ID: [f"p{i}" for i in range(s, s + len(chunk))], R.EMBEDDING: emb},
                             schema=R.embeddings_schema(dim)))
    write_manifest(directory, "encode", {"dim": dim, "metric": "ip", "model": "bench",
                                         "model_fingerprint": "bench"})
    return directory


def recall(got_rows: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(g) & set(t)) / k for g, t in zip(got_rows, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--factory", default="HNSW32")
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--cpus", type=int, default=2, help="threads for the single index = Ray CPUs")
    ap.add_argument("--actors", type=int, default=2, help="search actors")
    args = ap.parse_args()

    import faiss
    import ray

    from densekit.config import IndexConfig, load_config
    from densekit.pipelines.index import index, new_index
    from densekit.pipelines.search import ShardedSearcher

    scratch = Path(tempfile.mkdtemp(prefix="densekit-bench-index-"))
    x = clustered(args.vectors, args.dim, 200, 0)
    q = clustered(args.queries, args.dim, 200, 1)
    emb = write_embeddings(scratch / "emb", x, -(-args.vectors // args.shards))
    print(f"{args.vectors} x {args.dim} vectors in {args.shards} shards, factory {args.factory}, "
          f"{args.queries} queries, k={args.k}; {args.cpus} CPUs (machine: {os.cpu_count()})", flush=True)

    # Exact ground truth.
    faiss.omp_set_num_threads(args.cpus)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(x)
    t0 = time.perf_counter()
    _, truth = flat.search(q, args.k)
    flat_qps = args.queries / (time.perf_counter() - t0)

    # One index over everything, in this process, with all threads.
    t0 = time.perf_counter()
    single = new_index(args.factory, args.dim, "ip")
    if not single.is_trained:
        rng = np.random.default_rng(0)
        single.train(x[rng.choice(len(x), size=min(len(x), 100_000), replace=False)])
    single.add(x)
    single_build = time.perf_counter() - t0
    ps = faiss.ParameterSpace()
    if args.nprobe and faiss.try_extract_index_ivf(single) is not None:
        ps.set_index_parameter(single, "nprobe", args.nprobe)
    if "HNSW" in args.factory:
        ps.set_index_parameter(single, "efSearch", args.ef_search)
    t0 = time.perf_counter()
    _, single_rows = single.search(q, args.k)
    single_qps = args.queries / (time.perf_counter() - t0)

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        # densekit: one Ray task per shard (1 thread each), the trained index shared.
        cfg = load_config(IndexConfig, overrides=[f"embeddings={emb}", f"output={scratch / 'index'}",
                                                  f"factory='{args.factory}'", "train_size=100000"])
        t0 = time.perf_counter()
        index(cfg)
        sharded_build = time.perf_counter() - t0
        cfg_flat = load_config(IndexConfig, overrides=[f"embeddings={emb}", f"output={scratch / 'flat'}"])
        index(cfg_flat)
        results = {}
        for name, path, kw in (("Flat", scratch / "flat", {}),
                               (args.factory, scratch / "index",
                                {"nprobe": args.nprobe, "ef_search": args.ef_search if "HNSW" in args.factory else None})):
            with ShardedSearcher(path, num_actors=args.actors,
                                 cpus_per_actor=args.cpus / args.actors, **kw) as searcher:
                searcher.search(q[:100], args.k)  # warm up (page in the memory-mapped shards)
                t0 = time.perf_counter()
                got = []
                for s in range(0, len(q), 1000):
                    got.append(searcher.search(q[s : s + 1000], args.k)[1])
                qps = len(q) / (time.perf_counter() - t0)
            rows = np.vectorize(lambda p: int(p[1:]) if p else -1)(np.concatenate(got))
            results[name] = (qps, recall(rows, truth))
    finally:
        ray.shutdown()

    print(f"\nbuild {args.factory}: one index, one process ({args.cpus} threads) {single_build:.1f} s; "
          f"densekit {args.shards} shards as Ray tasks (wall, incl. sampling + training + writing) "
          f"{sharded_build:.1f} s -> {single_build / sharded_build:.2f}x")
    print(f"search (k={args.k}, batches of 1000):")
    print(f"  one IndexFlatIP in-process        {flat_qps:9.0f} q/s  recall@{args.k} 1.000")
    print(f"  densekit Flat, {args.actors} actors            {results['Flat'][0]:9.0f} q/s  "
          f"recall@{args.k} {results['Flat'][1]:.3f} (exact merge)")
    print(f"  one {args.factory} in-process    {single_qps:9.0f} q/s  recall@{args.k} {recall(single_rows, truth):.3f}")
    print(f"  densekit {args.factory}, {args.actors} actors   {results[args.factory][0]:9.0f} q/s  "
          f"recall@{args.k} {results[args.factory][1]:.3f}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
