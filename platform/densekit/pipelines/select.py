"""`densekit select`: PROD's data-progressive step. From the student's run over the training queries,
the teacher's scores of the student's candidates, and the qrels, keep each query that the teacher
ranks right and the student nearly right, as training groups with the hardest negatives first.

A query is kept when the student ranks its first positive within [student_min_rank,
student_max_rank] (PROD: 2..15) and the teacher, re-ranking the student's candidates, puts a
positive within its top teacher_max_rank (PROD: 1). The teacher's candidates are the group's
negatives (the student's top-k minus every judged-relevant passage, as `mine` wrote them) plus the
positives the student retrieved; a positive the student missed is not among them (PROD reranks
the retrieved list only).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from densekit.artifacts import (
    TableWriter,
    iter_table,
    prepare_output,
    read_manifest,
    write_manifest,
)
from densekit.config import SelectConfig
from densekit.data import records as R
from densekit.errors import InputError
from densekit.logs import Progress
from densekit.pipelines.evaluate import load_qrels
from densekit.pipelines.mine import iter_query_runs

logger = logging.getLogger(__name__)


def student_ranks(run_dir: str | Path, qrels: dict[str, dict[str, int]], level: int) -> dict[str, tuple[int | None, set[str]]]:
    """Per query of the run: (rank of its first positive or None, the positives it retrieved).

    Streams the run query by query; holds only one int and a few pids per query.
    """
    out: dict[str, tuple[int | None, set[str]]] = {}
    for qid, pids, ranks in iter_query_runs(run_dir):
        judged = qrels.get(qid, {})
        hits = [(r, p) for p, r in zip(pids, ranks) if judged.get(p, 0) >= level]
        first = min(hits)[0] if hits else None
        out[qid] = (first, {p for _, p in hits})
    return out


def teacher_rank(group: dict, retrieved_positives: set[str], where: str) -> int | None:
    """Rank (1-based) of the best positive in the teacher's reranking of the student's candidates.

    Args:
        group: a training group row (positives and negatives with teacher `score`s).
        retrieved_positives: the positives the student retrieved (only they are reranked).
        where: the groups table, for error messages.

    Returns:
        The rank, or None when no retrieved positive is in the group. Ties go against the
        positive (a negative scored equal to it ranks above it): "right" must be unambiguous.
    """
    def score(p: dict, role: str) -> float:
        s = p.get(R.SCORE)
        if s is None:
            raise InputError(
                where, None,
                f"query {group[R.QID]!r}: {role} {p[R.PID]!r} has no teacher score; run `densekit score` on the groups first",
            )
        return float(s)

    pos = [score(p, "positive") for p in group[R.POSITIVES] if p[R.PID] in retrieved_positives]
    if not pos:
        return None
    best = max(pos)
    negs = [score(p, "negative") for p in group[R.NEGATIVES]]
    return 1 + sum(1 for s in negs if s >= best)


def select(cfg: SelectConfig) -> None:
    """Write the kept queries' training groups into `cfg.output` (see the module docstring)."""
    out = Path(cfg.output)
    for path in (cfg.run, cfg.groups, cfg.qrels):
        read_manifest(path)
    if not prepare_output(out, cfg, overwrite=cfg.overwrite):
        return
    qrels = load_qrels(cfg.qrels)
    ranks = student_ranks(cfg.run, qrels, cfg.positive_level)
    counts = {
        "queries_in_run": len(ranks), "groups": 0, "kept": 0, "not_in_run": 0, "student_top": 0,
        "student_below_window": 0, "student_missed": 0, "teacher_wrong": 0, "short_groups": 0,
    }  # fmt: skip
    progress = Progress(logger, "select", unit="groups")
    with TableWriter(out, R.GROUPS_SCHEMA, rows_per_part=cfg.rows_per_part) as writer:
        for batch in iter_table(cfg.groups, [R.QID, R.QUERY, R.POSITIVES, R.NEGATIVES], batch_size=4096):
            kept = []
            for group in batch.to_pylist():
                counts["groups"] += 1
                progress.update(1)
                if group[R.QID] not in ranks:
                    counts["not_in_run"] += 1
                    continue
                first, retrieved = ranks[group[R.QID]]
                if first is None:
                    counts["student_missed"] += 1
                    continue
                if first < cfg.student_min_rank:
                    counts["student_top"] += 1
                    continue
                if first > cfg.student_max_rank:
                    counts["student_below_window"] += 1
                    continue
                t = teacher_rank(group, retrieved, str(cfg.groups))
                if t is None or t > cfg.teacher_max_rank:
                    counts["teacher_wrong"] += 1
                    continue
                if len(group[R.NEGATIVES]) < cfg.num_negatives:
                    counts["short_groups"] += 1
                group[R.NEGATIVES] = group[R.NEGATIVES][: cfg.num_negatives]  # retrieval order: hardest first
                kept.append(group)
            if kept:
                writer.write(pa.RecordBatch.from_pylist(kept, schema=R.GROUPS_SCHEMA))
                counts["kept"] += len(kept)
    progress.done()
    logger.info(
        "select: kept %d of %d groups (student rank outside %d..%d: %d above, %d below, %d missed; teacher wrong: %d)",
        counts["kept"], counts["groups"], cfg.student_min_rank, cfg.student_max_rank, counts["student_top"],
        counts["student_below_window"], counts["student_missed"], counts["teacher_wrong"],
    )  # fmt: skip
    if counts["kept"] == 0:
        logger.warning("select: no query kept; the next stage has no data (check the ranks window and the teacher)")
    write_manifest(out, "select", {"counts": counts, "run": str(cfg.run), "groups": str(cfg.groups)})
