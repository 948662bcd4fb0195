"""Faults on a multi-node Ray cluster on one machine (ray.cluster_utils.Cluster): a worker node
dies while `encode` or `score` runs, a search actor dies while `search` runs.

The head node runs no work (num_cpus=0, as Ray recommends for large clusters), so every actor lives
on one of two 1-CPU worker nodes and the node killed really hosts a live actor of the step. The
step must finish with every input row exactly once and the values of a run without the fault
(computed in-process, without Ray). A search either retries on a restarted actor and returns the
exact result, or fails loudly; it never returns a run with a shard missing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, is_complete, read_manifest, read_table, write_manifest
from densekit.config import EncodeConfig, IndexConfig, ScoreConfig, SearchConfig, load_config
from densekit.data import records as R

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long]

WORDS = ("dense retrieval trains small query and passage encoders a cross encoder teacher scores each "
         "pair hard negatives are mined from faiss index of the corpus margin mse distils").split()
NODE = {"num_cpus": 1, "object_store_memory": 100 << 20}
# Two actors of half a CPU: one per worker node (Ray Data and the searcher spread them), and the
# survivor has room for the one that is restarted.
HALF = ["resources.num_workers=2", "resources.cpus_per_worker=0.5"]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the shared single-node session, if a test started it
    # A dead node is noticed after ~3 missed health checks of 1 s (Ray's default: 5 of 3 s).
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 << 20,
                                                      "include_dashboard": False, "_system_config": health})
    for _ in range(2):
        c.add_node(**NODE)
    ray.init(address=c.address, include_dashboard=False, logging_level="WARNING")
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def two_workers(cluster):
    """Two live worker nodes at the start of each test (a killed one is replaced afterwards)."""
    for _ in range(2 - len(cluster.worker_nodes)):  # remove_node forgets a node
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    return cluster


def _actors(class_part: str) -> list[dict]:
    # The GCS's actor table (no dashboard needed); Ray Data names its actors after the stage.
    import ray

    return [a for a in ray._private.state.actors().values() if class_part in a["ActorClassName"]]


class Fault(threading.Thread):
    """Once a live actor of `class_part` runs on a worker node and `ready()` holds, kill it:
    `how="node"` removes its whole node (raylet, workers, object store), `how="process"` kills the
    actor's process with SIGKILL. Records whether the step's output was complete at that moment."""

    def __init__(self, cluster, class_part: str, output: Path, how: str = "node",
                 ready: Callable[[], bool] = lambda: True, timeout: float = 900):
        super().__init__(daemon=True)
        self.cluster, self.class_part, self.output, self.how = cluster, class_part, output, how
        self.ready, self.deadline = ready, time.time() + timeout
        self.victim: dict | None = None
        self.output_complete_at_kill: bool | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        workers = {n.node_id: n for n in self.cluster.worker_nodes}
        while not self.stop.is_set() and time.time() < self.deadline:
            live = [a for a in _actors(self.class_part)
                    if a["State"] == "ALIVE" and a["Address"]["NodeID"] in workers]
            if live and self.ready():
                self.victim = live[0]
                self.output_complete_at_kill = is_complete(self.output)
                if self.how == "node":
                    self.cluster.remove_node(workers[self.victim["Address"]["NodeID"]], allow_graceful=False)
                else:
                    os.kill(self.victim["Pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    def check(self) -> dict:
        """After the step: the fault fired while the step was still running. Returns the victim's
        actor record as it is now."""
        self.stop.set()
        self.join(timeout=60)
        assert self.victim is not None, "the fault never fired (no live actor seen)"
        assert self.output_complete_at_kill is False, "the fault came after the step had finished"
        now = next(a for a in _actors(self.class_part) if a["ActorID"] == self.victim["ActorID"])
        return now


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 60)))) for _ in range(n)]


def _table(directory: Path, schema: pa.Schema, columns: dict, rows_per_part: int) -> Path:
    with TableWriter(directory, schema, rows_per_part=rows_per_part) as w:
        w.write(pa.table(columns, schema=schema))
    write_manifest(directory, "test")
    return directory


def test_encode_survives_losing_a_worker_node(two_workers, tmp_path, tiny_model_dir, tally):
    from densekit.pipelines.encode import encode, encode_texts

    n = 600
    pids, texts = [f"p{i}" for i in range(n)], _texts(n, 0)
    titles = ["" if i % 3 else f"title {i % 5}" for i in range(n)]
    corpus = _table(tmp_path / "corpus", R.CORPUS_SCHEMA, {R.PID: pids, R.TEXT: texts, R.TITLE: titles}, 200)
    out = tmp_path / "emb"

    def producing() -> bool:  # the pipeline already wrote pieces of some shard
        return any((out / ".pieces").glob("shard-*/rows-*.parquet")) or any(out.glob("part-*.parquet"))

    fault = Fault(two_workers, "_EncodeAndWrite", out, "node", producing)
    fault.start()
    encode(load_config(EncodeConfig, overrides=[
        f"model={tiny_model_dir}", f"input={corpus}", f"output={out}", "rows_per_shard=100",
        "block_rows=25", "batch_size=16", *HALF]))
    victim = fault.check()
    tally.fault("encode: worker node removed mid-run")
    assert victim["NumRestarts"] >= 1, "the killed node's encoder actor was never restarted"

    table = read_table(out)
    tally.rows("encode after losing a worker node", pids, table.column(R.ID).to_pylist())
    assert table.column(R.ID).to_pylist() == pids  # input order, shard by shard
    assert read_manifest(out)["count"] == n
    ref = encode_texts(tiny_model_dir, texts, titles=titles)
    np.testing.assert_allclose(np.array(table.column(R.EMBEDDING).to_pylist()), ref, rtol=1e-4, atol=1e-5)


def test_score_survives_losing_a_worker_node(two_workers, tmp_path, tiny_model_dir, tally):
    import torch

    from densekit.models import build_model
    from densekit.models.spec import ModelSpec
    from densekit.pipelines.score import TeacherScorer, score

    torch.manual_seed(0)
    teacher = build_model(ModelSpec(kind="cross_encoder"), tiny_model_dir).save(tmp_path / "ce")
    n = 400
    ts = _texts(n * 5, 1)
    qids = [f"q{i}" for i in range(n)]
    cols = {R.QID: qids, R.QUERY: ts[:n],
            R.POSITIVES: [[R.passage(f"d{i}", ts[n + i])] for i in range(n)],
            R.NEGATIVES: [[R.passage(f"d{i}-{j}", ts[2 * n + 3 * i + j]) for j in range(3)] for i in range(n)]}
    groups = _table(tmp_path / "groups", R.GROUPS_SCHEMA, cols, 50)
    out = tmp_path / "scored"

    fault = Fault(two_workers, "TeacherScorer", out, "node")
    fault.start()
    score(load_config(ScoreConfig, overrides=[
        f"groups={groups}", f"output={out}", f"teachers=[{{model: '{teacher}'}}]", "batch_size=32", *HALF]))
    victim = fault.check()
    tally.fault("score: worker node removed mid-run")
    assert victim["NumRestarts"] >= 1, "the killed node's teacher actor was never restarted"

    got = read_table(out).to_pylist()
    tally.rows("score after losing a worker node (groups)", qids, [g[R.QID] for g in got])
    assert [g[R.QID] for g in got] == qids  # input order kept
    pairs = [(g[R.QID], p[R.PID]) for g in got for p in g[R.POSITIVES] + g[R.NEGATIVES]]
    want_pairs = [(q, p[R.PID]) for q, pos, neg in zip(qids, cols[R.POSITIVES], cols[R.NEGATIVES]) for p in pos + neg]
    tally.rows("score after losing a worker node (query-passage pairs)", want_pairs, pairs)
    ref = TeacherScorer(str(teacher)).score(cols[R.QUERY], [p + ng for p, ng in zip(cols[R.POSITIVES], cols[R.NEGATIVES])])
    np.testing.assert_allclose([p[R.SCORE] for g in got for p in g[R.POSITIVES] + g[R.NEGATIVES]],
                               np.concatenate(ref), rtol=1e-4, atol=1e-5)


# --- search ----------------------------------------------------------------------------------------

N, DIM, Q, K = 3000, 16, 1000, 10


@pytest.fixture(scope="module")
def index_and_queries(cluster, tmp_path_factory):
    """A 5-shard Flat index of N random vectors and Q query vectors (embedding tables)."""
    from densekit.pipelines.embeddings import embeddings_batch
    from densekit.pipelines.index import index

    root = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, DIM)).astype("float32")
    q = rng.normal(size=(Q, DIM)).astype("float32")
    for name, vectors, prefix, per_part in (("emb", x, "p", 600), ("qemb", q, "q", 1000)):
        d = root / name
        with TableWriter(d, R.embeddings_schema(DIM), rows_per_part=per_part) as w:
            w.write(embeddings_batch([f"{prefix}{i}" for i in range(len(vectors))], vectors))
        write_manifest(d, "encode", {"dim": DIM, "metric": "ip", "model": "m", "model_fingerprint": "fp"})
    index(load_config(IndexConfig, overrides=[f"embeddings={root / 'emb'}", f"output={root / 'index'}"]))
    # Exact reference: brute force over all vectors.
    scores = q @ x.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return root, x, q, top, np.take_along_axis(scores, top, axis=1)


def _search_cfg(root: Path, out: Path, max_restarts: int):
    return load_config(SearchConfig, overrides=[
        f"index={root / 'index'}", f"query_embeddings={root / 'qemb'}", f"output={out}", f"k={K}",
        "batch_size=2", f"max_restarts={max_restarts}", *HALF])


def test_search_actor_killed_mid_search_is_restarted(two_workers, index_and_queries, tmp_path, tally):
    from densekit.pipelines.search import search

    root, x, q, top, top_scores = index_and_queries
    out = tmp_path / "run"
    fault = Fault(two_workers, "_ShardGroup", out, "process",
                  ready=lambda: sum(a["State"] == "ALIVE" for a in _actors("_ShardGroup")) == 2)
    fault.start()
    search(_search_cfg(root, out, max_restarts=2))
    victim = fault.check()
    tally.fault("search: search actor killed mid-run (restarted)")
    assert victim["NumRestarts"] >= 1

    run = read_table(out).to_pydict()
    qids = [f"q{i}" for i in range(Q)]
    tally.rows("search run after an actor restart (query, rank)",
               [(qid, r) for qid in qids for r in range(1, K + 1)], list(zip(run[R.QID], run[R.RANK])))
    rows = np.array([int(p[1:]) for p in run[R.PID]]).reshape(Q, K)
    # Every shard answered: the exact top-k of all N vectors (random vectors: no ties at the cut).
    np.testing.assert_array_equal(rows, top)
    np.testing.assert_allclose(np.array(run[R.SCORE]).reshape(Q, K), top_scores, rtol=1e-5, atol=1e-5)


def test_search_actor_killed_without_restarts_fails_loudly(two_workers, index_and_queries, tmp_path, tally):
    from densekit.pipelines.search import SearchActorError, search

    root, *_ = index_and_queries
    out = tmp_path / "run"
    fault = Fault(two_workers, "_ShardGroup", out, "process",
                  ready=lambda: sum(a["State"] == "ALIVE" for a in _actors("_ShardGroup")) == 2)
    fault.start()
    with pytest.raises(SearchActorError, match="died and could not be restarted.*no result was produced"):
        search(_search_cfg(root, out, max_restarts=0))
    fault.check()
    tally.fault("search: search actor killed mid-run (no restarts: fails)")
    assert not is_complete(out)
    assert not list(out.glob("part-*.parquet")) and not (out / "_run.trec").exists()
