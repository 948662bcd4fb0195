"""MS MARCO TSV: collection.tsv and queries.*.tsv (`id<TAB>text`), msmarco-docs.tsv, and the DPR /
LEAD psgs_w100.tsv passage file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from densekit.data.formats.base import (
    BATCH_BYTES,
    BATCH_ROWS,
    ErrorPolicy,
    check_id,
    check_text,
    iter_lines,
    read_rows,
    row_reader,
    split_columns,
    with_line,
)
from densekit.data.records import CORPUS_SCHEMA, PID, QID, QUERIES_SCHEMA
from densekit.errors import InputError


def read_id_text(
    path: str | Path,
    kind: str = "corpus",
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """MS MARCO collection.tsv / queries.*.tsv: `id<TAB>text`. Yields corpus (pid, text, title="")
    or queries (qid, text) batches, plus `line`."""
    policy = policy or ErrorPolicy()
    corpus = kind == "corpus"
    schema = with_line(CORPUS_SCHEMA if corpus else QUERIES_SCHEMA)
    key = PID if corpus else QID

    def rows() -> Iterator[tuple]:
        for n, line in iter_lines(path, policy, "lines of id<TAB>text"):
            cols = split_columns(line, "\t", 2, path, n, policy, "id<TAB>text")
            if cols is None:
                continue
            id_, text = cols
            if not check_id(id_, path, n, key, policy) or not check_text(text, path, n, "text", policy):
                continue
            if corpus:
                yield len(line), id_, text, "", n
            else:
                yield len(line), id_, text, n

    yield from read_rows(rows(), schema, batch_rows, batch_bytes)


@row_reader(CORPUS_SCHEMA)
def read_msmarco_docs(path: str | Path, policy: ErrorPolicy) -> Iterator[tuple]:
    """MS MARCO msmarco-docs.tsv: `docid<TAB>url<TAB>title<TAB>body` -> corpus (pid, text=body,
    title); the URL is dropped (as LEAD does)."""
    for n, line in iter_lines(path, policy, "lines of docid<TAB>url<TAB>title<TAB>body"):
        cols = split_columns(line, "\t", 4, path, n, policy, "docid<TAB>url<TAB>title<TAB>body")
        if cols is None:
            continue
        id_, _url, title, body = cols
        if not check_id(id_, path, n, "docid", policy) or not check_text(line, path, n, "line", policy):
            continue
        yield len(line), id_, body, title, n


DPR_HEADER = ["id", "text", "title"]


@row_reader(CORPUS_SCHEMA)
def read_dpr_tsv(path: str | Path, policy: ErrorPolicy) -> Iterator[tuple]:
    """DPR / LEAD psgs_w100.tsv: `id<TAB>text<TAB>title`. DPR's file has a header line `id text
    title`, LEAD's has none: a first line equal to that header is skipped, any other is data."""
    first = True
    for n, line in iter_lines(path, policy, "lines of id<TAB>text<TAB>title"):
        if first:
            first = False
            head = line.split("\t")
            if [h.strip().lower() for h in head] == DPR_HEADER:
                continue
            if head and head[0].strip().lower() == "id":
                raise InputError(
                    path, n, f"header {head} does not match; expected the columns {DPR_HEADER}"
                )
        cols = split_columns(line, "\t", 3, path, n, policy, "id<TAB>text<TAB>title")
        if cols is None:
            continue
        id_, text, title = cols
        if not check_id(id_, path, n, "id", policy) or not check_text(line, path, n, "line", policy):
            continue
        yield len(line), id_, text, title, n
