"""`densekit rerank`: a teacher (usually a cross-encoder) reorders each query's top candidates of a run.

The run's top `depth` passages of every query become one candidate group (texts from the corpus and
queries tables), the `score` step's Ray Data actor pool scores every (query, passage) pair, and the
groups are written back as a run, ordered by the reranker's score (ties keep the first run's
order); with `qrels`, only the queries it judges are reranked. Its output is a run table like
`search`'s, so `evaluate` compares the reranker with the retriever it reranks on the same queries:
how a cross-encoder teacher is checked before it teaches.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from densekit.artifacts import (
    TableWriter,
    atomic_path,
    iter_table,
    prepare_output,
    read_manifest,
    write_manifest,
    writing,
)
from densekit.data import records as R
from densekit.data.io import trec_run_lines, write_lines
from densekit.logs import Progress
from densekit.pipelines.search import TREC_FILE  # the run's TREC file, named as search names it

logger = logging.getLogger(__name__)

def rerank(cfg) -> None:
    """Write the reranked run (qid, pid, rank, score) and _run.trec into `cfg.output`.

    Args:
        cfg: a RerankConfig.
    """
    from densekit.models import check_model_files

    for path in (cfg.run, cfg.queries, cfg.corpus, *([cfg.qrels] if cfg.qrels else [])):
        read_manifest(path)
    check_model_files(cfg.reranker)  # before any text is read or Ray starts
    out = Path(cfg.output)
    with writing(out, "rerank"):
        if not prepare_output(out, cfg, overwrite=cfg.overwrite):
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        # Scratch beside the output (same file system), written and removed by this step only.
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.rerank-", dir=out.parent))
        try:
            n_queries, pairs = _candidates(cfg, scratch / "candidates")
            _score(cfg, scratch / "candidates", scratch / "scored")
            n_rows = _write_run(scratch / "scored", out)
            # The score step hashed the reranker's weights into its manifest: not a second time.
            fingerprint = read_manifest(scratch / "scored")["teachers"][0]["model_fingerprint"]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        with atomic_path(out / TREC_FILE) as tmp:
            write_lines(tmp, trec_run_lines(iter_table(out), cfg.tag))
        write_manifest(out, "rerank", {
            "run": str(cfg.run), "reranker": str(cfg.reranker),
            "reranker_fingerprint": fingerprint, "depth": cfg.depth,
            "num_queries": n_queries, "pairs": pairs, "qrels": cfg.qrels,
        })
    logger.info("rerank: %d queries, top %d each (%d pairs, %d run rows) -> %s",
                n_queries, cfg.depth, pairs, n_rows, out)


def _candidates(cfg, groups: Path) -> tuple[int, int]:
    """Each query's top `depth` passages, in the run's order, as a groups table (no positives)."""
    from densekit.data.lookup import TableLookup
    from densekit.pipelines.mine import groups_batch, iter_query_runs

    judged = None
    if cfg.qrels:
        from densekit.pipelines.evaluate import load_qrels

        judged = set(load_qrels(cfg.qrels))
    n_queries = pairs = 0
    with TableLookup.for_table(cfg.corpus, R.PID, [R.TEXT, R.TITLE]) as corpus, \
            TableLookup.for_table(cfg.queries, R.QID, [R.TEXT]) as queries, \
            TableWriter(groups, R.GROUPS_SCHEMA, rows_per_part=100_000) as writer:
        pending: list[tuple] = []
        for qid, pids, ranks in iter_query_runs(cfg.run):
            if judged is not None and qid not in judged:
                continue
            order = np.argsort(np.asarray(ranks), kind="stable")[: cfg.depth]
            top = [pids[i] for i in order]
            pending.append((qid, [], top, None))
            n_queries += 1
            pairs += len(top)
            if len(pending) >= 4096:
                writer.write(groups_batch(pending, corpus, queries, cfg))
                pending.clear()
        if pending:
            writer.write(groups_batch(pending, corpus, queries, cfg))
    if n_queries == 0:
        from densekit.errors import InputError

        raise InputError(cfg.run, None, "no query to rerank: the run is empty" + (
            f" or none of its queries is judged in {cfg.qrels}" if cfg.qrels else ""))
    write_manifest(groups, "rerank-candidates", {"run": str(cfg.run)})
    return n_queries, pairs


def _score(cfg, groups: Path, scored: Path) -> None:
    """The score step's actor pipeline over the candidate groups."""
    from densekit.config import ScoreConfig, TeacherConfig
    from densekit.pipelines.score import score

    score(ScoreConfig(groups=str(groups), output=str(scored),
                      teachers=[TeacherConfig(model=cfg.reranker, kind=cfg.kind, max_length=cfg.max_length)],
                      batch_size=cfg.batch_size, precision=cfg.precision, compile=cfg.compile,
                      resources=cfg.resources))


def _write_run(scored: Path, out: Path) -> int:
    """The scored groups as a run: each query's candidates by descending reranker score."""
    n_rows = 0
    progress = Progress(logger, "rerank", unit="queries")
    with TableWriter(out, R.RUN_SCHEMA, rows_per_part=5_000_000) as writer:
        for batch in iter_table(scored, [R.QID, R.NEGATIVES]):
            cols: dict[str, list] = {R.QID: [], R.PID: [], R.RANK: [], R.SCORE: []}
            for qid, cands in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                scores = np.array([c[R.SCORE] for c in cands], dtype=np.float32)
                order = np.argsort(-scores, kind="stable")  # ties keep the first run's order
                cols[R.QID] += [qid] * len(order)
                cols[R.PID] += [cands[i][R.PID] for i in order]
                cols[R.RANK] += list(range(1, len(order) + 1))
                cols[R.SCORE] += scores[order].tolist()
            writer.write(cols)
            n_rows += len(cols[R.QID])
            progress.update(batch.num_rows)
    progress.done()
    return n_rows
