"""densekit's `index` step against one in-process FAISS build of the same factory, at N vectors.

Writes N clustered 128-dim unit vectors as an embeddings table (shards of `--shard-rows`) into a
work folder, builds one index in this process (train on a `--train-size` sample, then add all) on
1 thread and on every core, then runs densekit's index step `--repeats` times on a local Ray
(2 builders of `--cpus-per-worker`, training on `--train-cpus`), timing its sample-and-train part,
and prints the ratios. `OMP_WAIT_POLICY`/`GOMP_SPINCOUNT` in the environment choose the OpenMP
wait policy of the step's workers (densekit's default: PASSIVE; `GOMP_SPINCOUNT=300000` gives
GNU OpenMP's default spinning).

    python bench/index_build.py --out $WORK/index-build --vectors 1000000
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
# Ray starts its workers at nice 15 (RayConfig worker_niceness); the in-process build runs at the
# driver's priority. Same priority for both, as bench/scale.py and bench/index_search.py do.
os.environ.setdefault("RAY_worker_niceness", "0")


def write_vectors(emb: Path, n: int, dim: int, shard_rows: int, seed: int) -> None:
    from densekit.artifacts import TableWriter, write_manifest
    from densekit.data import records as R
    from densekit.pipelines.embeddings import embeddings_batch

    if (emb / "_manifest.json").exists():
        return
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4096, dim)).astype(np.float32)
    with TableWriter(emb, R.embeddings_schema(dim), rows_per_part=shard_rows) as w:
        for s in range(0, n, 50_000):
            m = min(50_000, n - s)
            v = centers[rng.integers(0, 4096, m)] + 0.7 * rng.standard_normal((m, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            w.write(embeddings_batch([f"d{i}" for i in range(s, s + m)], v))
    write_manifest(emb, "encode", {"dim": dim, "metric": "ip", "normalized": True, "model": "random",
                                   "model_fingerprint": "random-v1", "count": n, "kind": "passages"})


def build_in_process(x: np.ndarray, factory: str, train_size: int, seed: int, threads: int):
    """One FAISS index of `factory` over `x` in this process on `threads` threads, trained as
    densekit's index step trains (no polysemous training, k-means seeded) on a `train_size` sample.
    Returns the index and the seconds of each part: {"sample", "train", "add"}."""
    import faiss

    from densekit.pipelines.index import new_index, skip_polysemous_training

    faiss.omp_set_num_threads(threads)
    seconds = {"sample": 0.0, "train": 0.0}
    index = new_index(factory, x.shape[1], "ip")
    skip_polysemous_training(index)  # as densekit's index step trains it
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        t = time.perf_counter()
        sample = x[np.random.default_rng(seed).choice(len(x), size=min(len(x), train_size), replace=False)]
        seconds["sample"] = time.perf_counter() - t
        t = time.perf_counter()
        index.train(sample)
        seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    index.add(x)
    seconds["add"] = time.perf_counter() - t
    return index, seconds


def in_process(emb: Path, factory: str, train_size: int, seed: int) -> dict:
    from densekit.pipelines.embeddings import iter_embeddings

    x = np.concatenate([v for _, v in iter_embeddings(emb)])
    out = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        _, seconds = build_in_process(x, factory, train_size, seed, threads)
        out[threads] = {"train": seconds["train"], "add": seconds["add"]}
        print(f"one in-process index, {threads} thread(s): train {seconds['train']:.2f} s + add {seconds['add']:.2f} s "
              f"= {seconds['train'] + seconds['add']:.2f} s", flush=True)
    return out


def densekit_step(args, emb: Path) -> list[dict]:
    import ray

    from densekit.config import IndexConfig, load_config
    from densekit.pipelines import index as I
    from densekit.raycluster import start_local_ray, worker_runtime_env

    timed: dict = {}
    train_remote = I._train_remote

    def timed_train(*a, **k):
        t = time.perf_counter()
        out = train_remote(*a, **k)
        timed["sample+train"] = time.perf_counter() - t
        return out

    I._train_remote = timed_train
    start_local_ray(runtime_env=worker_runtime_env())  # as the CLI starts it
    runs = []
    try:
        for rep in range(args.repeats):
            out = args.out / "index"
            shutil.rmtree(out, ignore_errors=True)
            cfg = load_config(IndexConfig, overrides=[
                f"embeddings={emb}", f"output={out}", f"factory='{args.factory}'", f"train_size={args.train_size}",
                "resources.num_workers=2", f"resources.cpus_per_worker={args.cpus_per_worker}",
                f"train_cpus={args.train_cpus}"])
            t = time.perf_counter()
            I.index(cfg)
            runs.append({"step": time.perf_counter() - t, **timed})
            print(f"densekit index step, run {rep + 1}: {runs[-1]['step']:.2f} s "
                  f"(sample and train {timed['sample+train']:.2f} s)", flush=True)
    finally:
        I._train_remote = train_remote
        ray.shutdown()
    return runs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (vectors and index)")
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--shard-rows", type=int, default=100_000)
    p.add_argument("--factory", default="IVF1024,PQ32")
    p.add_argument("--train-size", type=int, default=100_000)
    p.add_argument("--train-cpus", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    emb = args.out / "emb"
    write_vectors(emb, args.vectors, args.dim, args.shard_rows, args.seed)
    single = in_process(emb, args.factory, args.train_size, args.seed)
    runs = densekit_step(args, emb)
    best = min(r["step"] for r in runs)
    for threads, t in single.items():
        print(f"densekit step (best {best:.2f} s) / one index on {threads} thread(s): "
              f"{(t['train'] + t['add']) / best:.2f}x as fast", flush=True)
    policy = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    print(f"load average {os.getloadavg()}, environment {policy or 'none set (densekit: PASSIVE)'}")
    return {"single": single, "densekit": runs}


if __name__ == "__main__":
    main()
