"""BEIR: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from densekit.data.formats.base import (
    BATCH_BYTES,
    BATCH_ROWS,
    ErrorPolicy,
    check_id,
    iter_jsonl,
    iter_lines,
    json_id,
    json_text,
    parse_int,
    read_rows,
    split_columns,
    with_line,
)
from densekit.data.records import CORPUS_SCHEMA, QRELS_SCHEMA, QUERIES_SCHEMA
from densekit.errors import InputError


def read_beir_corpus(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """BEIR corpus.jsonl: one `{"_id", "title", "text", ...}` object per line (title optional)."""
    policy = policy or ErrorPolicy()
    schema = with_line(CORPUS_SCHEMA)
    what = 'one JSON object per line with "_id", "title" and "text"'

    def rows() -> Iterator[tuple]:
        for n, line, obj in iter_jsonl(path, policy, what):
            id_ = json_id(obj, "_id", path, n, policy, what)
            if id_ is None:
                continue
            text = json_text(obj, "text", path, n, policy, what)
            if text is None:
                continue
            title = json_text(obj, "title", path, n, policy, what, required=False)
            if title is None:
                continue
            yield len(line), id_, text, title, n

    yield from read_rows(rows(), schema, batch_rows, batch_bytes)


def read_beir_queries(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """BEIR queries.jsonl: one `{"_id", "text", ...}` object per line."""
    policy = policy or ErrorPolicy()
    schema = with_line(QUERIES_SCHEMA)
    what = 'one JSON object per line with "_id" and "text"'

    def rows() -> Iterator[tuple]:
        for n, line, obj in iter_jsonl(path, policy, what):
            id_ = json_id(obj, "_id", path, n, policy, what)
            if id_ is None:
                continue
            text = json_text(obj, "text", path, n, policy, what)
            if text is None:
                continue
            yield len(line), id_, text, n

    yield from read_rows(rows(), schema, batch_rows, batch_bytes)


BEIR_QRELS_HEADER = ["query-id", "corpus-id", "score"]


def read_beir_qrels(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """BEIR qrels/<split>.tsv: a header `query-id<TAB>corpus-id<TAB>score`, then integer judgments."""
    policy = policy or ErrorPolicy()
    schema = with_line(QRELS_SCHEMA)

    def rows() -> Iterator[tuple]:
        first = True
        for n, line in iter_lines(path, policy, "a header query-id<TAB>corpus-id<TAB>score and judgments"):
            if first:
                first = False
                head = [h.strip() for h in line.split("\t")]
                missing = [c for c in BEIR_QRELS_HEADER if c not in head]
                if missing or len(head) != 3:
                    raise InputError(
                        path, n, f"header {head} lacks column(s) {missing or head[3:]}; expected {BEIR_QRELS_HEADER}"
                    )
                order = [head.index(c) for c in BEIR_QRELS_HEADER]
                continue
            cols = split_columns(line, "\t", 3, path, n, policy, "query-id<TAB>corpus-id<TAB>score")
            if cols is None:
                continue
            qid, pid, rel = (cols[i] for i in order)
            if not check_id(qid, path, n, "query-id", policy) or not check_id(pid, path, n, "corpus-id", policy):
                continue
            r = parse_int(rel, path, n, "score", policy)
            if r is None:
                continue
            yield len(line), qid, pid, r, n

    yield from read_rows(rows(), schema, batch_rows, batch_bytes)
