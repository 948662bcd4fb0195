"""`densekit search` and `ShardedSearcher`: exact top-k over a sharded FAISS index held by Ray actors.

Each actor holds some shards (memory-mapped where the type allows) and merges its shards' top-k;
the caller merges the actors' top-k with a FAISS ResultHeap. Both merges are exact: the result is
the top-k of the union of the shards, as one index over all vectors would return it. An actor that
dies is restarted and its call retried (`max_restarts`); if it stays dead the search fails loudly:
a result never silently misses a shard.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from densekit.artifacts import (
    TableWriter,
    atomic_path,
    iter_table,
    prepare_output,
    read_manifest,
    write_manifest,
)
from densekit.data import records as R
from densekit.data.io import trec_run_lines, write_lines
from densekit.errors import ConfigError, DensekitError
from densekit.logs import Progress
from densekit.pipelines.embeddings import iter_embeddings, read_embeddings_manifest
from densekit.pipelines.index import load_shard, shard_ids, shared_coarse_quantizer

logger = logging.getLogger(__name__)

# Beside the run's Parquet parts, named with `_` so that pandas, pyarrow and Ray Data skip them
# (an earlier densekit named them run.trec and query_embeddings/).
TREC_FILE = "_run.trec"
QUERY_EMBEDDINGS = "_query_embeddings"
LEGACY_NAMES = ("run.trec", "query_embeddings")


class SearchActorError(DensekitError):
    """A search actor died (beyond its restarts) or failed: no partial result is returned."""


class _ShardGroup:
    """Ray actor: some shards of one index, searched together (merged top-k per query)."""

    def __init__(self, index_dir: str, shards: list[dict], factory: str, metric: str, mmap: bool,
                 nprobe: int | None, ef_search: int | None, threads: int):
        import faiss

        faiss.omp_set_num_threads(max(1, threads))
        self.metric = metric
        self.shards = []
        params = faiss.ParameterSpace()
        for s in shards:
            path = Path(index_dir) / s["dir"]
            index = load_shard(path, factory, mmap)
            if nprobe is not None and faiss.try_extract_index_ivf(index) is not None:
                params.set_index_parameter(index, "nprobe", nprobe)
            if ef_search is not None and "HNSW" in factory:
                params.set_index_parameter(index, "efSearch", ef_search)
            ids = shard_ids(path)
            if len(ids) != index.ntotal:
                raise DensekitError(f"{path}: {index.ntotal} vectors but {len(ids)} ids")
            self.shards.append((s["shard"], s["offset"], index, ids))
        # IVF shards trained once (densekit's index step) share their coarse quantizer: assign each
        # query to its lists once for all of this actor's shards, not once per shard. With many
        # shards per actor the per-shard assignment (queries x nlist products) cost more than the
        # list scans themselves (3.2M documents in 32 shards: 16 assignments per query per actor).
        self.coarse = shared_coarse_quantizer([s[2] for s in self.shards])

    def ready(self) -> list[int]:
        return [s[0] for s in self.shards]

    def pid(self) -> int:
        return os.getpid()

    def search(self, queries: np.ndarray, k: int, return_vectors: bool) -> dict:
        """Top-k over this actor's shards.

        Args:
            queries: `[B, D]` float32.

        Returns:
            shards: the shard numbers searched (the caller checks none is missing);
            scores: `[B, k]` float32, higher is better (L2 distances negated), -inf where fewer
                than k documents exist; ids: `[B, k]` int64 global row ids (-1 = none);
            pids: pyarrow string array of B*k pids (null = none); vectors: `[B, k, D]` or None.
        """
        import faiss

        b = len(queries)
        heap = faiss.ResultHeap(b, k, keep_max=True)
        assigned = None
        if self.coarse is not None:
            quantizer, nprobe = self.coarse
            centroid_dist, lists = quantizer.search(queries, nprobe)  # [B, nprobe] each
            assigned = (lists, centroid_dist)
        for _, offset, index, _ in self.shards:
            if assigned is not None:  # what index.search does after its own assignment
                dist, local = index.search_preassigned(queries, k, *assigned)
            else:
                dist, local = index.search(queries, k)  # [B, k] each
            scores = -dist if self.metric == "l2" else dist
            scores = np.where(local < 0, -np.inf, scores).astype(np.float32)
            heap.add_result(scores, np.where(local < 0, -1, local + offset))
        heap.finalize()
        ids = heap.I  # [B, k] global ids
        flat = ids.reshape(-1)
        # Gather the chosen rows' pids (and vectors) shard by shard, then place them in one go.
        src = np.full(b * k, -1, dtype=np.int64)  # position in `found` of each result, -1 = none
        found: list[pa.Array] = []
        n_found = 0
        vectors = np.zeros((b * k, queries.shape[1]), np.float32) if return_vectors else None
        for _, offset, index, shard_pids in self.shards:
            sel = np.flatnonzero((flat >= offset) & (flat < offset + index.ntotal))
            if not len(sel):
                continue
            local = flat[sel] - offset
            found.append(shard_pids.take(pa.array(local)))
            src[sel] = n_found + np.arange(len(sel))
            n_found += len(sel)
            if return_vectors:
                try:
                    vectors[sel] = index.reconstruct_batch(local)  # [n, D]
                except RuntimeError as e:
                    raise DensekitError(
                        "return_vectors needs shards that can reconstruct their vectors "
                        f"(Flat, HNSW, PQ); this index cannot: {str(e).strip().splitlines()[-1]}"
                    ) from None
        pool = pa.concat_arrays(found) if found else pa.array([], pa.string())
        pids = pool.take(pa.array(src, mask=src < 0))  # nulls where no document
        if vectors is not None:
            vectors = vectors.reshape(b, k, -1)
        return {"shards": self.ready(), "scores": heap.D, "ids": ids, "pids": pids, "vectors": vectors}


@dataclass
class _Pending:
    refs: list  # one ObjectRef per actor
    k: int
    batch: int


def search_index_in_process(index_dir: str | Path, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over a (small) densekit index in this process, shards memory-mapped: no Ray, no
    actors (a training worker's dev evaluation must not start search actors of its own).

    Args:
        queries: `[B, D]` query embeddings.
        k: results per query (capped at the index's size).

    Returns:
        (scores `[B, k]` float32, higher is better; pids `[B, k]` object array, None = none).
    """
    manifest = read_manifest(index_dir)
    shards, offset = [], 0
    for i, s in enumerate(manifest["shards"]):
        shards.append({"shard": i, "dir": s["dir"], "offset": offset, "ntotal": s["ntotal"]})
        offset += s["ntotal"]
    group = _ShardGroup(str(index_dir), shards, manifest["factory"], manifest["metric"], True, None, None, 1)
    k = min(k, offset)
    res = group.search(np.ascontiguousarray(queries, dtype=np.float32), k, False)
    pids = np.asarray(res["pids"].to_pylist(), dtype=object).reshape(len(queries), k)
    return res["scores"], pids


class ShardedSearcher:
    """Search a `densekit index` output from Ray actors, each holding some of its shards.

    Usable in-process by other steps (e.g. ADORE's training loop retrieving each batch's top-k from
    a fixed index):

        with ShardedSearcher("runs/index", num_actors=4) as searcher:
            scores, pids = searcher.search(query_vectors, k=200)            # [B, k], [B, k]
            scores, pids, vectors = searcher.search(q, k=200, return_vectors=True)  # + [B, k, D]

    Scores are "higher is better" (inner products; negated distances for L2 indexes). Where fewer
    than k documents exist, scores are -inf and pids None. With `num_actors=0` the shards are
    loaded and searched in this process (no Ray): for small indexes, or inside a Ray Train worker
    that must not start actors of its own.

    Args:
        index_dir: a complete `densekit index` output.
        num_actors: actors to spread the shards over (at most one per shard); 0 = in-process.
        mmap: memory-map shard files where the index type allows.
        nprobe: IVF lists visited per query; ef_search: HNSW efSearch (None = FAISS defaults).
        cpus_per_actor: CPUs (and FAISS threads) per actor.
        max_restarts: restarts of a dead actor, each retrying its pending call; beyond that a
            search raises SearchActorError.
        resources: a ResourcesConfig for init_ray when Ray is not initialised yet.
    """

    def __init__(
        self,
        index_dir: str | Path,
        num_actors: int = 1,
        *,
        mmap: bool = True,
        nprobe: int | None = None,
        ef_search: int | None = None,
        cpus_per_actor: float = 1.0,
        max_restarts: int = 2,
        resources: Any | None = None,
    ):
        self.index_dir = Path(index_dir)
        self.manifest = read_manifest(self.index_dir)
        for key in ("factory", "dim", "metric", "shards"):
            if key not in self.manifest:
                raise DensekitError(f"{self.index_dir}: not a densekit index (manifest lacks {key})")
        self.dim, self.metric = int(self.manifest["dim"]), self.manifest["metric"]
        self.ntotal = int(self.manifest["ntotal"])
        shards, offset = [], 0
        for i, s in enumerate(self.manifest["shards"]):
            shards.append({"shard": i, "dir": s["dir"], "offset": offset, "ntotal": s["ntotal"]})
            offset += s["ntotal"]
        self.local: _ShardGroup | None = None
        self.actors: list = []
        if num_actors == 0:
            self.groups = [shards]
            self.local = _ShardGroup(str(self.index_dir), shards, self.manifest["factory"], self.metric,
                                     mmap, nprobe, ef_search, int(max(1, cpus_per_actor)))
            return
        import ray

        from densekit.raycluster import init_ray, openmp_options

        init_ray(resources)
        n = max(1, min(num_actors, len(shards)))
        # Balance by size: the largest shards first, each to the least-loaded actor.
        groups: list[list[dict]] = [[] for _ in range(n)]
        load = [0] * n
        for s in sorted(shards, key=lambda s: -s["ntotal"]):
            j = int(np.argmin(load))
            groups[j].append(s)
            load[j] += s["ntotal"]
        actor_cls = ray.remote(
            num_cpus=cpus_per_actor, max_restarts=max_restarts, max_task_retries=max_restarts,
            **openmp_options(int(max(1, cpus_per_actor))),
        )(_ShardGroup)
        self.groups = [sorted(g, key=lambda s: s["shard"]) for g in groups]
        self.actors = [
            actor_cls.options(scheduling_strategy="SPREAD").remote(
                str(self.index_dir), g, self.manifest["factory"], self.metric, mmap, nprobe,
                ef_search, int(max(1, cpus_per_actor)))
            for g in self.groups
        ]
        loaded = self._get([a.ready.remote() for a in self.actors])
        for g, got in zip(self.groups, loaded):
            assert got == [s["shard"] for s in g]
        logger.info("search actors ready: %d actors over %d shards (%d vectors)", n, len(shards),
                    self.ntotal)

    # --- searching ---

    def submit(self, queries: np.ndarray, k: int, return_vectors: bool = False) -> _Pending:
        """Start a search on every actor; `gather` its result (lets callers overlap batches)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [B, {self.dim}], got {list(queries.shape)}")
        if self.local is not None:  # in-process: the "refs" are the answers themselves
            return _Pending([self.local.search(queries, k, return_vectors)], k, len(queries))
        import ray

        ref = ray.put(queries)
        return _Pending([a.search.remote(ref, k, return_vectors) for a in self.actors], k, len(queries))

    def gather(self, pending: _Pending) -> tuple:
        """The merged result of `submit`: (scores [B, k], pids [B, k] object) [+ vectors [B, k, D]]."""
        import faiss

        parts = pending.refs if self.local is not None else self._get(pending.refs)
        for g, part in zip(self.groups, parts):
            if part["shards"] != [s["shard"] for s in g]:
                raise SearchActorError(
                    f"an actor answered for shards {part['shards']}, expected {[s['shard'] for s in g]}"
                )
        b, k = pending.batch, pending.k
        heap = faiss.ResultHeap(b, k, keep_max=True)
        base = 0
        for part in parts:
            kk = part["scores"].shape[1]
            # ids here are positions in the concatenation of the actors' answers.
            pos = base + np.arange(b)[:, None] * kk + np.arange(kk)[None, :]  # [B, kk]
            scores = np.where(part["ids"] < 0, -np.inf, part["scores"]).astype(np.float32)
            heap.add_result(scores, np.where(part["ids"] < 0, -1, pos))
            base += b * kk
        heap.finalize()
        pos = heap.I.reshape(-1)
        valid = pos >= 0
        all_pids = pa.concat_arrays([p["pids"] for p in parts])
        pids = np.full(b * k, None, dtype=object)
        pids[valid] = np.asarray(all_pids.take(pa.array(pos[valid])).to_pylist(), dtype=object)
        scores = np.where(heap.I < 0, -np.inf, heap.D).astype(np.float32)
        if parts and parts[0]["vectors"] is not None:
            all_vecs = np.concatenate([p["vectors"].reshape(-1, self.dim) for p in parts])
            vectors = np.zeros((b * k, self.dim), np.float32)
            vectors[valid] = all_vecs[pos[valid]]
            return scores, pids.reshape(b, k), vectors.reshape(b, k, self.dim)
        return scores, pids.reshape(b, k)

    def search(self, queries: np.ndarray, k: int, return_vectors: bool = False) -> tuple:
        """Exact top-k over all shards for `[B, D]` float32 queries (see the class docstring)."""
        return self.gather(self.submit(queries, k, return_vectors))

    def _get(self, refs: list) -> list:
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            raise SearchActorError(
                f"a search actor of {self.index_dir} died and could not be restarted ({type(e).__name__}); "
                "no result was produced (raise max_restarts or check the actor's node and memory)"
            ) from e
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, DensekitError) else None
            if cause is not None:
                raise cause from None
            raise SearchActorError(f"a search actor of {self.index_dir} failed: {e}") from e

    def close(self) -> None:
        if getattr(self, "actors", []):
            import ray

            for a in self.actors:
                ray.kill(a, no_restart=True)
        self.actors = []
        self.local = None

    def __enter__(self) -> ShardedSearcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the step --------------------------------------------------------------------------------------


def check_models(index_dir: str | Path, index_manifest: dict, queries_dir: str | Path,
                 query_manifest: dict, asymmetric: bool) -> None:
    """Refuse queries encoded by another model than the index's, unless `asymmetric`."""
    fi, fq = index_manifest.get("model_fingerprint"), query_manifest.get("model_fingerprint")
    if index_manifest["dim"] != query_manifest["dim"]:
        raise ConfigError(
            f"{index_dir} holds {index_manifest['dim']}-dim vectors, the queries in {queries_dir} "
            f"are {query_manifest['dim']}-dim"
        )
    if fi is None or fq is None:
        logger.warning("cannot check that queries and index come from the same model "
                       "(no model fingerprint recorded)")
        return
    if fi != fq and not asymmetric:
        raise ConfigError(
            f"{index_dir} was built from model {index_manifest.get('model')} (fingerprint {fi[:12]}), "
            f"but the queries in {queries_dir} were encoded with {query_manifest.get('model')} "
            f"(fingerprint {fq[:12]}). If that is intended (asymmetric retrieval: documents indexed "
            "with a teacher, queries from a distilled query encoder), set asymmetric=true"
        )
    if fi != fq:
        logger.info("asymmetric retrieval: index model %s, query model %s",
                    index_manifest.get("model"), query_manifest.get("model"))


def search(cfg) -> None:
    """Write the run table (qid, pid, rank, score) and _run.trec into `cfg.output`.

    Args:
        cfg: a SearchConfig. With `queries` + `model`, the queries are first encoded (by the encode
            step's Ray Data pipeline) into `<output>/_query_embeddings`.
    """
    out = Path(cfg.output)
    index_manifest = read_manifest(cfg.index)
    if cfg.query_embeddings is not None:
        qdir = Path(cfg.query_embeddings)
        check_models(cfg.index, index_manifest, qdir, read_embeddings_manifest(qdir), cfg.asymmetric)
    else:
        qdir = out / QUERY_EMBEDDINGS
        _check_query_model(cfg, index_manifest)  # before any query is encoded
    if not prepare_output(out, cfg, overwrite=cfg.overwrite, keep_partial=True):
        return
    for stale in list(out.glob("*.parquet")) + [out / TREC_FILE]:
        stale.unlink(missing_ok=True)  # a previous, interrupted run's parts
    for legacy in LEGACY_NAMES:  # an earlier densekit's interrupted run
        if (out / legacy).is_dir():
            shutil.rmtree(out / legacy)
        else:
            (out / legacy).unlink(missing_ok=True)
    if cfg.query_embeddings is None:
        _encode_queries(cfg, qdir)
    qman = read_embeddings_manifest(qdir)
    check_models(cfg.index, index_manifest, qdir, qman, cfg.asymmetric)
    total = int(qman.get("rows", 0)) or None

    from densekit.raycluster import init_ray

    init_ray(cfg.resources)
    n_queries = n_rows = 0
    progress = Progress(logger, "search", total=total, unit="queries")
    with ShardedSearcher(
        cfg.index, cfg.resources.num_workers, mmap=cfg.mmap, nprobe=cfg.nprobe,
        ef_search=cfg.ef_search, cpus_per_actor=cfg.resources.cpus_per_worker,
        max_restarts=cfg.max_restarts,
    ) as searcher, TableWriter(out, R.RUN_SCHEMA, rows_per_part=5_000_000) as writer:
        in_flight: deque = deque()

        def drain_one() -> None:
            nonlocal n_queries, n_rows
            qids, pending = in_flight.popleft()
            scores, pids = searcher.gather(pending)
            cols: dict[str, list] = {R.QID: [], R.PID: [], R.RANK: [], R.SCORE: []}
            for qid, row_pids, row_scores in zip(qids, pids, scores):
                keep = np.array([p is not None for p in row_pids], dtype=bool)
                row_pids, row_scores = row_pids[keep], row_scores[keep]
                cols[R.QID] += [qid] * len(row_pids)
                cols[R.PID] += list(row_pids)
                cols[R.RANK] += list(range(1, len(row_pids) + 1))
                cols[R.SCORE] += row_scores.tolist()
            writer.write(cols)
            n_queries += len(qids)
            n_rows += len(cols[R.QID])
            progress.update(len(qids))

        for qids, vectors in iter_embeddings(qdir, cfg.batch_size):
            in_flight.append((qids, searcher.submit(vectors, cfg.k)))
            if len(in_flight) >= 2:  # keep the actors busy while the driver writes
                drain_one()
        while in_flight:
            drain_one()
    progress.done()
    with atomic_path(out / TREC_FILE) as tmp:
        write_lines(tmp, trec_run_lines(iter_table(out), cfg.tag))
    write_manifest(out, "search", {
        "index": str(cfg.index),
        "queries": str(qdir),
        "k": cfg.k,
        "num_queries": n_queries,
        "model": qman.get("model"),
        "model_fingerprint": qman.get("model_fingerprint"),
        "index_model_fingerprint": index_manifest.get("model_fingerprint"),
        "asymmetric": cfg.asymmetric,
        "factory": index_manifest["factory"],
    })
    logger.info("search: %d queries, %d run rows -> %s", n_queries, n_rows, out)


def _check_query_model(cfg, index_manifest: dict) -> None:
    """Before encoding any query: the query encoder is the index's model (unless asymmetric)."""
    from densekit.models import check_model_files
    from densekit.pipelines.embeddings import model_fingerprint

    read_manifest(cfg.queries)
    check_model_files(cfg.model)
    fi = index_manifest.get("model_fingerprint")
    if cfg.asymmetric or fi is None or fi == model_fingerprint(cfg.model):
        return
    raise ConfigError(
        f"{cfg.index} was built from model {index_manifest.get('model')} (fingerprint {fi[:12]}), "
        f"but the query encoder model={cfg.model} is another model. If that is intended "
        "(asymmetric retrieval: documents indexed with a teacher, queries from a distilled query "
        "encoder), set asymmetric=true"
    )


def _encode_queries(cfg, qdir: Path) -> None:
    """Encode `cfg.queries` with `cfg.model` into `qdir` (resumable, like any encode output)."""
    from densekit.config import EncodeConfig
    from densekit.pipelines.encode import encode

    encode(EncodeConfig(
        model=cfg.model, input=cfg.queries, output=str(qdir), kind="queries",
        batch_size=cfg.encode_batch_size, resources=cfg.resources, overwrite=cfg.overwrite,
    ))
