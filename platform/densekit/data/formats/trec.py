"""TREC: qrels (`qid iter docid rel`) and runs (`qid Q0 docid rank score tag`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from densekit.data.formats.base import (
    ErrorPolicy,
    check_id,
    iter_lines,
    parse_float,
    parse_int,
    row_reader,
    split_columns,
)
from densekit.data.records import QRELS_SCHEMA, RUN_SCHEMA


@row_reader(QRELS_SCHEMA)
def read_trec_qrels(path: str | Path, policy: ErrorPolicy) -> Iterator[tuple]:
    """TREC qrels: `qid iter docid rel` (whitespace-separated; `iter` is ignored, usually 0)."""
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


@row_reader(RUN_SCHEMA)
def read_trec_run(path: str | Path, policy: ErrorPolicy) -> Iterator[tuple]:
    """TREC run: `qid Q0 docid rank score tag` (whitespace-separated). The tag is not kept."""
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
