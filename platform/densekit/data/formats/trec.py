"""TREC: qrels (`qid iter docid rel`) and runs (`qid Q0 docid rank score tag`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from densekit.data.formats.base import (
    BATCH_BYTES,
    BATCH_ROWS,
    ErrorPolicy,
    check_id,
    iter_lines,
    parse_float,
    parse_int,
    read_rows,
    split_columns,
    with_line,
)
from densekit.data.records import QRELS_SCHEMA, RUN_SCHEMA


def read_trec_qrels(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """TREC qrels: `qid iter docid rel` (whitespace-separated; `iter` is ignored, usually 0)."""
    policy = policy or ErrorPolicy()
    schema = with_line(QRELS_SCHEMA)

    def rows() -> Iterator[tuple]:
        for n, line in iter_lines(path, policy, "lines of qid 0 docid relevance"):
            cols = split_columns(line, None, 4, path, n, policy, "qid 0 docid relevance")
            if cols is None:
                continue
            qid, _, pid, rel = cols
            if not check_id(qid, path, n, "qid", policy) or not check_id(pid, path, n, "docid", policy):
                continue
            r = parse_int(rel, path, n, "relevance", policy)
            if r is None:
                continue
            yield len(line), qid, pid, r, n

    yield from read_rows(rows(), schema, batch_rows, batch_bytes)


def read_trec_run(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """TREC run: `qid Q0 docid rank score tag` (whitespace-separated). The tag is not kept."""
    policy = policy or ErrorPolicy()
    schema = with_line(RUN_SCHEMA)

    def rows() -> Iterator[tuple]:
        for n, line in iter_lines(path, policy, "lines of qid Q0 docid rank score tag"):
            cols = split_columns(line, None, 6, path, n, policy, "qid Q0 docid rank score tag")
            if cols is None:
                continue
            qid, _, pid, rank, score, _tag = cols
            if not check_id(qid, path, n, "qid", policy) or not check_id(pid, path, n, "docid", policy):
                continue
            r = parse_int(rank, path, n, "rank", policy)
            if r is None:
                continue
            s = parse_float(score, path, n, "score", policy)
            if s is None:
                continue
            yield len(line), qid, pid, r, s, n

    yield from read_rows(rows(), schema, batch_rows, batch_bytes)
