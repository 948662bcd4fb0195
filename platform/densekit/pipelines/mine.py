"""`densekit mine`: hard negatives from a run, written as training groups (GROUPS_SCHEMA).

Per query: positives are the qrels with relevance >= positive_level; negatives come from the run's
ranks [min_rank, max_rank] after removing EVERY judged-relevant document (relevance > 0), not only
the first positive (LEAD's upstream code drops only the first one, a bug). Then n are sampled
(seeded per qid) or the top n are kept, in rank order. With positive_min_rank / positive_max_rank,
only the queries whose best positive the run ranks inside that window get a group (PROD's select
keeps no other, so its cross-encoder need not score them). Texts come from the corpus and queries
tables through densekit.data.lookup (bounded memory), so the run is streamed query by query.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from densekit.artifacts import (
    TableWriter,
    iter_table,
    prepare_output,
    read_manifest,
    write_manifest,
)
from densekit.data import records as R
from densekit.errors import InputError
from densekit.logs import Progress
from densekit.pipelines.evaluate import load_qrels

logger = logging.getLogger(__name__)


def iter_query_runs(run_dir: str | Path, with_scores: bool = False) -> Iterator[tuple]:
    """Stream (qid, pids, ranks) per query from a run table whose rows are grouped by qid; with
    `with_scores`, (qid, pids, ranks, scores).

    Raises:
        InputError: a qid that reappears after another query's rows (the run is not grouped).
    """
    seen: set[str] = set()
    qid: str | None = None
    pids: list[str] = []
    ranks: list[int] = []
    scores: list[float] = []
    columns = [R.QID, R.PID, R.RANK] + ([R.SCORE] if with_scores else [])
    for batch in iter_table(run_dir, columns):
        cols = [batch.column(i).to_pylist() for i in range(len(columns))]
        if not with_scores:
            cols.append([None] * batch.num_rows)
        for q, p, r, sc in zip(*cols):
            if q != qid:
                if qid is not None:
                    yield (qid, pids, ranks, scores) if with_scores else (qid, pids, ranks)
                if q in seen:
                    raise InputError(run_dir, None, f"query {q!r} appears in two separate blocks; "
                                     "expected the run's rows grouped by qid (as search writes them)")
                seen.add(q)
                qid, pids, ranks, scores = q, [], [], []
            pids.append(p)
            ranks.append(r)
            scores.append(sc)
    if qid is not None:
        yield (qid, pids, ranks, scores) if with_scores else (qid, pids, ranks)


def select_negatives(
    qid: str,
    pids: list[str],
    ranks: list[int],
    judged: dict[str, int],
    min_rank: int,
    max_rank: int,
    n: int,
    strategy: str,
    seed: int,
) -> tuple[list[str], int]:
    """The negatives of one query, in rank order, and how many judged-relevant pids were removed.

    Args:
        pids, ranks: the query's run (any order; ranks are 1-based).
        judged: this query's qrels (pid -> relevance); any pid with relevance > 0 is never returned.
        strategy: "top" (the best-ranked n) or "sample" (n uniformly without replacement; the
            generator is seeded with (seed, crc32(qid)), so a qid always gets the same negatives).
    """
    order = np.argsort(np.asarray(ranks), kind="stable")
    window = [pids[i] for i in order if min_rank <= ranks[i] <= max_rank]
    pool = [p for p in window if judged.get(p, 0) <= 0]
    removed = len(window) - len(pool)
    if len(pool) <= n or strategy == "top":
        return pool[:n], removed
    rng = np.random.default_rng([seed, zlib.crc32(qid.encode("utf-8"))])
    keep = np.sort(rng.choice(len(pool), size=n, replace=False))
    return [pool[i] for i in keep], removed


def mine(cfg) -> None:
    """Write training groups (qid, query, positives, negatives) into `cfg.output`.

    Args:
        cfg: a MineConfig.
    """
    from densekit.data.lookup import TableLookup

    out = Path(cfg.output)
    for path in (cfg.run, cfg.queries, cfg.corpus):
        read_manifest(path)
    if not prepare_output(out, cfg, overwrite=cfg.overwrite):
        return
    qrels = load_qrels(cfg.qrels)
    counts = {"groups": 0, "no_positive": 0, "too_few_negatives": 0, "short_groups": 0,
              "judged_relevant_removed": 0, "qrels_queries_not_in_run": 0}
    if cfg.run_scores:
        counts.update(positives_not_retrieved=0, no_retrieved_positive=0)
    if cfg.positive_window():
        counts["positive_rank_outside"] = 0
    run_qids: set[str] = set()
    progress = Progress(logger, "mine", unit="queries")
    with TableLookup.for_table(cfg.corpus, R.PID, [R.TEXT, R.TITLE]) as corpus, \
            TableLookup.for_table(cfg.queries, R.QID, [R.TEXT]) as queries, \
            TableWriter(out, R.GROUPS_SCHEMA, rows_per_part=cfg.rows_per_part) as writer:
        pending: list[tuple] = []  # (qid, positives, negatives, {pid: run score} or None)

        def flush() -> None:
            if pending:
                writer.write(groups_batch(pending, corpus, queries, cfg))
                pending.clear()

        for qid, pids, ranks, *rest in iter_query_runs(cfg.run, with_scores=cfg.run_scores):
            run_qids.add(qid)
            progress.update(1)
            judged = qrels.get(qid, {})
            positives = sorted((p for p, r in judged.items() if r >= cfg.positive_level),
                               key=lambda p: (-judged[p], p))
            if not positives:
                counts["no_positive"] += 1
                continue
            if cfg.positive_window():
                best = min((r for p, r in zip(pids, ranks) if judged.get(p, 0) >= cfg.positive_level), default=None)
                if best is None or best < cfg.positive_min_rank or (
                        cfg.positive_max_rank is not None and best > cfg.positive_max_rank):
                    counts["positive_rank_outside"] += 1
                    continue
            scores = None
            if cfg.run_scores:  # the run's scores become the groups' teacher scores
                scores = dict(zip(pids, rest[0]))
                retrieved = [p for p in positives if p in scores]
                counts["positives_not_retrieved"] += len(positives) - len(retrieved)
                if not retrieved:
                    counts["no_retrieved_positive"] += 1
                    continue
                positives = retrieved
            negatives, removed = select_negatives(qid, pids, ranks, judged, cfg.min_rank, cfg.max_rank,
                                                  cfg.num_negatives, cfg.strategy, cfg.seed)
            counts["judged_relevant_removed"] += removed
            if len(negatives) < cfg.min_negatives:
                counts["too_few_negatives"] += 1
                continue
            if len(negatives) < cfg.num_negatives:
                counts["short_groups"] += 1
            pending.append((qid, positives, negatives, scores))
            counts["groups"] += 1
            if len(pending) >= 4096:
                flush()
        flush()
    progress.done()
    counts["qrels_queries_not_in_run"] = sum(
        1 for q, d in qrels.items() if q not in run_qids and any(r >= cfg.positive_level for r in d.values()))
    for key, value in counts.items():
        if value and key != "groups":
            logger.info("mine: %s = %d", key, value)
    logger.info("mine: %d training groups -> %s", counts["groups"], out)
    write_manifest(out, "mine", {"counts": counts, "run": str(cfg.run), "qrels": str(cfg.qrels)})


def groups_batch(pending, corpus, queries, cfg) -> pa.RecordBatch:
    """Fill in query and passage texts for a list of (qid, positives, negatives)."""
    qids = [q for q, *_ in pending]
    qpos = queries.find(qids)
    if (qpos < 0).any():
        missing = qids[int(np.flatnonzero(qpos < 0)[0])]
        raise InputError(cfg.queries, None, f"query {missing!r} (from the run) is not in the queries table")
    qtexts = queries.take(qpos, R.TEXT).to_pylist()
    all_pids = [p for _, pos, neg, _ in pending for p in pos + neg]
    ppos = corpus.find(all_pids)
    if (ppos < 0).any():
        missing = all_pids[int(np.flatnonzero(ppos < 0)[0])]
        raise InputError(cfg.corpus, None, f"passage {missing!r} (from the run or qrels) is not in the corpus")
    texts = corpus.take(ppos, R.TEXT).to_pylist()
    titles = corpus.take(ppos, R.TITLE).to_pylist()
    rows, j = [], 0
    for (qid, pos, neg, scores), qtext in zip(pending, qtexts):
        group = []
        for p in pos + neg:
            group.append(R.passage(p, texts[j], titles[j] or "", None if scores is None else float(scores[p])))
            j += 1
        rows.append({R.QID: qid, R.QUERY: qtext, R.POSITIVES: group[: len(pos)],
                     R.NEGATIVES: group[len(pos):]})
    return pa.RecordBatch.from_pylist(rows, schema=R.GROUPS_SCHEMA)
