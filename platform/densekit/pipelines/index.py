"""`densekit index`: a sharded FAISS index, one Ray task per embedding shard.

Trained index types (IVF, PQ, ...) are trained once, on a sample drawn evenly from every shard, and
the trained empty index is shared by all shard builders through the object store. Output layout:

    <output>/trained.faiss                  the trained empty index (trained types only)
    <output>/shards/shard-NNNNN/index.faiss one FAISS index per embedding shard
    <output>/shards/shard-NNNNN/ids.parquet row i of the index -> its pid (column `id`)
    <output>/shards/shard-NNNNN/_manifest.json factory, dim, metric, model fingerprint, ntotal
    <output>/_manifest.json                 the same facts plus the shard list (written last)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from densekit.artifacts import (
    WRITE_ERRNOS,
    atomic_path,
    is_complete,
    prepare_output,
    read_manifest,
    table_parts,
    write_manifest,
    writing,
)
from densekit.data import records as R
from densekit.errors import ConfigError, DensekitError, InputError
from densekit.logs import Progress
from densekit.pipelines.embeddings import iter_embeddings, read_embeddings_manifest

logger = logging.getLogger(__name__)

SHARDS = "shards"
TRAINED = "trained.faiss"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"


def faiss_metric(metric: str) -> int:
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def gpu_faiss_available() -> bool:
    """True when the installed FAISS is a GPU build and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def new_index(factory: str, dim: int, metric: str) -> Any:
    """`faiss.index_factory`, with FAISS's complaint turned into a ConfigError."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss_metric(metric))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1]
        raise ConfigError(
            f"factory '{factory}' (dim {dim}): FAISS cannot build it: {first}"
        ) from None


def skip_polysemous_training(index: Any) -> None:
    """Switch off FAISS's polysemous training of a PQ index (`PQm`, `IVFn,PQm`, behind OPQ too).

    index_factory turns it on unless the factory ends in `np`. After the PQ's k-means it re-orders
    each sub-quantizer's centroids so that Hamming distances between codes track real distances;
    only polysemous filtering at search time (`polysemous_ht`) uses that, and densekit's search
    never turns it on. A re-ordering changes no distance and no result, but it costs: training
    `IVF64,PQ32` on 3,000 128-dim vectors took 58-64 s on one core of a loaded machine, 2 s without.
    """
    for part in pq_parts(index):
        part.do_polysemous_training = False


def pq_parts(index: Any) -> list[Any]:
    """The parts of an index that train a PQ with polysemous re-ordering: an IndexPQ or IndexIVFPQ,
    at the top or behind a pre-transform (OPQ) or inside an IVF."""
    import faiss

    parts = [index]
    if isinstance(index, faiss.IndexPreTransform):
        parts.append(faiss.downcast_index(index.index))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        parts.append(faiss.downcast_index(ivf))
    return [p for p in parts if hasattr(p, "do_polysemous_training")]


def shard_dir(root: str | Path, shard: int) -> Path:
    return Path(root) / SHARDS / f"shard-{shard:05d}"


def write_faiss(index: Any, path: str | Path) -> None:
    """`faiss.write_index`, with a failed write (FAISS raises RuntimeError) raised as an OSError
    carrying the system's errno, so a full disk is reported as such."""
    import errno

    import faiss

    try:
        faiss.write_index(index, str(path))
    except RuntimeError as e:
        text = str(e).strip().splitlines()[-1]
        code = next((c for c in WRITE_ERRNOS if os.strerror(c) in str(e)), errno.EIO)
        raise OSError(code, f"FAISS could not write the index: {text}", str(path)) from None


# --- remote work -----------------------------------------------------------------------------------


def _sample_shard(path: str, n: int, seed: int, shard: int) -> np.ndarray:
    """`[n, D]` float32 rows drawn uniformly without replacement from one embedding shard."""
    rows = pq.ParquetFile(path).metadata.num_rows
    n = min(n, rows)
    rng = np.random.default_rng([seed, shard])
    wanted = np.sort(rng.choice(rows, size=n, replace=False))
    out, start, j = [], 0, 0
    for _, vectors in iter_embeddings(path):
        stop = start + len(vectors)
        hi = np.searchsorted(wanted, stop)
        if hi > j:
            out.append(vectors[wanted[j:hi] - start])
            j = hi
        start = stop
        if j == n:
            break
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _train(
    sample: np.ndarray, factory: str, dim: int, metric: str, seed: int, use_gpu: bool, threads: int
) -> tuple[np.ndarray, str]:
    """Train an empty index on `sample` `[n, D]`; return it serialised (uint8 array) and the
    OpenMP wait policy its threads ran with (the task's environment; see openmp_options)."""
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    index = new_index(factory, dim, metric)
    skip_polysemous_training(index)  # only polysemous search would use it; densekit's never does
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        if ivf.nlist > len(sample):
            raise ConfigError(
                f"factory '{factory}' has {ivf.nlist} lists but only {len(sample)} training vectors; "
                "raise train_size or lower the number of lists"
            )
    if use_gpu and gpu_faiss_available() and ivf is not None:
        # The k-means of the coarse quantizer is what costs; FAISS's documented way to run it on GPU.
        clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(dim, faiss_metric(metric)))
        ivf.clustering_index = clustering_index
    index.train(sample)
    if ivf is not None:
        ivf.clustering_index = None
    return faiss.serialize_index(index), os.environ.get("OMP_WAIT_POLICY", "default")


def _build_shard(
    source: str,
    shard: int,
    output: str,
    trained: np.ndarray | None,
    factory: str,
    dim: int,
    metric: str,
    add_batch_rows: int,
    threads: int,
    extra: dict,
) -> int:
    """Build one shard's index and pid map from one embedding shard; return its size.

    `extra` (factory, dim, metric, model fingerprint, source file identity) goes to its manifest.
    """
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    index = (
        faiss.deserialize_index(trained) if trained is not None else new_index(factory, dim, metric)
    )
    assert index.is_trained, "trained index types must be trained before the shard builders run"
    ids: list[str] = []
    for batch_ids, vectors in iter_embeddings(source, add_batch_rows):
        if vectors.shape[1] != dim:
            raise DensekitError(f"{source}: vectors of dim {vectors.shape[1]}, expected {dim}")
        index.add(vectors)
        ids += batch_ids
    assert index.ntotal == len(ids)
    final = shard_dir(output, shard)
    # The whole shard directory appears at once (rename), manifest included: never half a shard.
    with atomic_path(final) as tmp:
        tmp.mkdir()
        write_faiss(index, tmp / INDEX_FILE)
        pq.write_table(pa.table({R.ID: pa.array(ids, pa.string())}), tmp / IDS_FILE)
        write_manifest(
            tmp,
            "index",
            {
                **extra,
                "shard": shard,
                "ntotal": int(index.ntotal),
            },
        )
    return int(index.ntotal)


# --- the step --------------------------------------------------------------------------------------


def index(cfg) -> None:
    """Build `cfg.output` from the embeddings table `cfg.embeddings` (see the module docstring).

    Args:
        cfg: an IndexConfig. Rerunning after a crash rebuilds only the shards that are missing.
    """

    emb = read_embeddings_manifest(cfg.embeddings)
    dim = emb["dim"]
    metric = emb["metric"] if cfg.metric == "auto" else cfg.metric
    if cfg.metric != "auto" and cfg.metric != emb["metric"]:
        logger.warning(
            "indexing with metric %s although encode recorded %s", cfg.metric, emb["metric"]
        )
    probe = new_index(cfg.factory, dim, metric)  # fails early on a bad factory string
    out = Path(cfg.output)
    sources = [str(p) for p in table_parts(cfg.embeddings)]
    rows = [pq.ParquetFile(p).metadata.num_rows for p in sources]
    if not sum(rows):
        raise InputError(
            cfg.embeddings, None, "holds no vectors; expected at least one (was the corpus empty?)"
        )
    with writing(out, "index", "finished shards are kept"):
        _index(cfg, emb, dim, metric, probe, out, sources, rows)


def _index(
    cfg,
    emb: dict,
    dim: int,
    metric: str,
    probe: Any,
    out: Path,
    sources: list[str],
    rows: list[int],
) -> None:
    import ray

    from densekit.raycluster import init_ray, openmp_options

    if not prepare_output(out, cfg, overwrite=cfg.overwrite, keep_partial=True):
        return
    extra = {
        "factory": cfg.factory,
        "dim": dim,
        "metric": metric,
        "model": emb.get("model"),
        "model_fingerprint": emb.get("model_fingerprint"),
        "embeddings": str(cfg.embeddings),
    }
    # A shard's source file as the embeddings manifest recorded it (size and sha256): a rerun
    # reuses a finished shard only if it was built from the very same file.
    identity = [
        {"source": Path(s).name, "source_file": emb["files"].get(Path(s).name)} for s in sources
    ]
    todo = [i for i in range(len(sources)) if not _shard_done(out, i, {**extra, **identity[i]})]
    logger.info(
        "index %s (%s, dim %d, %s): %d shards, %d to build, %d vectors",
        out,
        cfg.factory,
        dim,
        metric,
        len(sources),
        len(todo),
        sum(rows),
    )
    init_ray(cfg.resources)
    threads = max(1, int(cfg.resources.cpus_per_worker))
    use_gpu = bool(cfg.use_gpu_faiss and cfg.resources.use_gpu)
    if cfg.use_gpu_faiss and not cfg.resources.use_gpu:
        logger.warning("use_gpu_faiss needs resources.use_gpu=true; building on CPU")
    task_opts = {"num_cpus": cfg.resources.cpus_per_worker, "num_gpus": 1 if use_gpu else 0,
                 **openmp_options(threads)}

    trained_ref = None
    if todo and not probe.is_trained:
        trained_path = out / TRAINED
        if (
            trained_path.exists()
        ):  # written atomically by an earlier, interrupted run of this config
            logger.info("reusing %s", trained_path)
            trained = np.fromfile(trained_path, dtype=np.uint8)
        else:
            trained = _train_remote(sources, rows, cfg, dim, metric, task_opts, use_gpu)
            with atomic_path(trained_path) as tmp:
                trained.tofile(tmp)
        trained_ref = ray.put(trained)

    build = ray.remote(max_retries=2, **task_opts)(_build_shard)
    pending = {
        build.remote(
            sources[i],
            i,
            str(out),
            trained_ref,
            cfg.factory,
            dim,
            metric,
            cfg.add_batch_rows,
            threads,
            {**extra, **identity[i]},
        ): i
        for i in todo
    }
    progress = Progress(logger, "index shards", total=len(todo), unit="shards")
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(done[0])
            ray.get(done[0])  # re-raises a builder's error (after its retries) with its traceback
            progress.update(1)
            logger.debug("shard %d built", shard)
    except BaseException:
        _cancel(list(pending))
        raise
    progress.done()

    shards = []
    for i in range(len(sources)):
        m = read_manifest(shard_dir(out, i), deep=False)  # shards this step just wrote
        shards.append({"dir": shard_dir(out, i).relative_to(out).as_posix(), "ntotal": m["ntotal"]})
    ntotal = sum(s["ntotal"] for s in shards)
    if ntotal != sum(rows):
        raise DensekitError(f"{out}: shards hold {ntotal} vectors, the embeddings {sum(rows)}")
    # Shard manifests already carry their files' sha256: the top level records sizes only.
    write_manifest(
        out,
        "index",
        {**extra, "num_shards": len(shards), "ntotal": ntotal, "shards": shards},
        checksums=False,
    )
    logger.info("index %s: %d vectors in %d shards", out, ntotal, len(shards))


def _cancel(refs: list, timeout: float = 60) -> None:
    """Stop the builders still queued or running after one failed, and wait until they have: none
    may go on writing into the output once the step has reported its failure (nor race a rerun).
    A cancelled builder's atomic_path removes its temporary shard directory."""
    import ray

    if not refs:
        return
    for ref in refs:
        ray.cancel(ref)
    ray.wait(refs, num_returns=len(refs), timeout=timeout)


def _shard_done(out: Path, shard: int, extra: dict) -> bool:
    """A shard is reusable if complete and built from the same source file by the same recipe."""
    d = shard_dir(out, shard)
    if not is_complete(d):
        return False
    m = read_manifest(d, deep=False)  # the step's own partial output
    same = all(m.get(k) == v for k, v in extra.items())
    if not same:
        logger.info("%s was built from other inputs: rebuilding it", d)
    return same


def training_cpus(cfg) -> float:
    """CPUs of the index training task: `cfg.train_cpus`, or all the CPUs of the largest alive node
    of the (initialised) Ray cluster, at least `cfg.resources.cpus_per_worker`. The task waits for
    them like any task: on a cluster busy with other work, set train_cpus lower."""
    import ray

    node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    largest = max(node_cpus, default=0.0)
    if cfg.train_cpus is not None:
        if cfg.train_cpus > largest:
            raise ConfigError(
                f"train_cpus={cfg.train_cpus:g}: no node of the Ray cluster has that many CPUs "
                f"(largest: {largest:g}); the training task could never start"
            )
        return float(cfg.train_cpus)
    return max(float(cfg.resources.cpus_per_worker), float(int(largest)))


def _train_remote(sources, rows, cfg, dim, metric, task_opts, use_gpu) -> np.ndarray:
    """Draw the training sample evenly from every shard (one task each), then train once."""
    import ray

    from densekit.raycluster import openmp_options

    total = sum(rows)
    want = min(cfg.train_size, total)
    # Training runs alone (the builders wait for it): give its k-means a whole node, not the one
    # builder's share (cpus_per_worker) that it used to run on.
    train_cpus = training_cpus(cfg)
    threads = max(1, int(train_cpus))
    task_opts = {**task_opts, "num_cpus": train_cpus, **openmp_options(threads)}
    per_shard = [int(round(want * r / total)) for r in rows]
    sample_task = ray.remote(num_cpus=1)(_sample_shard)
    parts = ray.get(
        [
            sample_task.remote(s, n, cfg.seed, i)
            for i, (s, n) in enumerate(zip(sources, per_shard))
            if n > 0
        ]
    )
    sample = np.concatenate([p for p in parts if len(p)])
    logger.info("training %s on %d vectors (%d threads)", cfg.factory, len(sample), threads)
    train_task = ray.remote(**task_opts)(_train)
    t0 = time.perf_counter()
    trained, policy = ray.get(train_task.remote(sample, cfg.factory, dim, metric, cfg.seed, use_gpu, threads))
    logger.info("trained in %.1f s (%d threads, OpenMP wait policy %s)", time.perf_counter() - t0, threads, policy)
    return trained


def load_shard(path: str | Path, factory: str, mmap: bool = True) -> Any:
    """Read one shard's index, memory-mapped where FAISS allows it for this index type.

    IVF indexes map their inverted lists (IO_FLAG_MMAP); Flat, PQ and HNSW map their code storage
    (IO_FLAG_MMAP_IFC, zero-copy). Both need a real file on a local or network file system.
    """
    import faiss

    path = str(Path(path) / INDEX_FILE) if Path(path).is_dir() else str(path)
    if not mmap:
        return faiss.read_index(path)
    flag = faiss.IO_FLAG_MMAP if "IVF" in factory else faiss.IO_FLAG_MMAP_IFC
    try:
        return faiss.read_index(path, flag)
    except RuntimeError as e:
        logger.warning(
            "%s: cannot memory-map (%s); reading it into memory",
            path,
            str(e).strip().splitlines()[-1],
        )
        return faiss.read_index(path)


def shared_coarse_quantizer(indexes: list) -> tuple[Any, int] | None:
    """(quantizer, nprobe) when every index is a plain IVF index with one and the same coarse
    quantizer (equal centroids) and nprobe; None otherwise (single shard, other types, wrappers
    such as OPQ, or shards trained apart), where each shard is searched on its own."""
    import faiss

    if len(indexes) < 2:
        return None
    ivfs = []
    for index in indexes:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None or int(ivf.this) != int(index.this):  # not IVF, or wrapped (OPQ, id map...)
            return None
        ivfs.append(ivf)
    first = ivfs[0]
    try:
        centroids = first.quantizer.reconstruct_n(0, first.nlist)
        for other in ivfs[1:]:
            if other.nlist != first.nlist or other.nprobe != first.nprobe:
                return None
            if not np.array_equal(other.quantizer.reconstruct_n(0, other.nlist), centroids):
                return None
    except RuntimeError:  # a quantizer that cannot give back its centroids
        return None
    return first.quantizer, int(first.nprobe)


def shard_ids(path: str | Path) -> pa.Array:
    """A shard's row -> pid map (a pyarrow string array: compact, and `take` is vectorised)."""
    return pq.read_table(Path(path) / IDS_FILE, columns=[R.ID]).column(R.ID).combine_chunks()
