"""BEIR: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from densekit.data.formats.base import (
    ErrorPolicy,
    check_id,
    iter_jsonl,
    iter_lines,
    json_id,
    json_text,
    parse_int,
    row_reader,
    split_columns,
)
from densekit.data.records import CORPUS_SCHEMA, QRELS_SCHEMA, QUERIES_SCHEMA
from densekit.errors import InputError

logger = logging.getLogger(__name__)


@row_reader(CORPUS_SCHEMA)
def read_beir_corpus(path: str | Path, policy: ErrorPolicy) -> Iterator[tuple]:
    """BEIR corpus.jsonl: one `{"_id", "title", "text", ...}` object per line (title optional)."""
    return _json_rows(path, policy, 'one JSON object per line with "_id", "title" and "text"', title=True)


@row_reader(QUERIES_SCHEMA)
def read_beir_queries(path: str | Path, policy: ErrorPolicy) -> Iterator[tuple]:
    """BEIR queries.jsonl: one `{"_id", "text", ...}` object per line."""
    return _json_rows(path, policy, 'one JSON object per line with "_id" and "text"', title=False)


def _json_rows(path: str | Path, policy: ErrorPolicy, what: str, title: bool) -> Iterator[tuple]:
    """(nbytes, _id, text[, title], line) of each valid object (a corpus has an optional title)."""
    for n, line, obj in iter_jsonl(path, policy, what):
        id_ = json_id(obj, "_id", path, n, policy, what)
        if id_ is None:
            continue
        text = json_text(obj, "text", path, n, policy, what)
        if text is None:
            continue
        if not title:
            yield len(line), id_, text, n
            continue
        head = json_text(obj, "title", path, n, policy, what, required=False)
        if head is not None:
            yield len(line), id_, text, head, n


BEIR_QRELS_HEADER = ["query-id", "corpus-id", "score"]


@row_reader(QRELS_SCHEMA)
def read_beir_qrels(path: str | Path, policy: ErrorPolicy) -> Iterator[tuple]:
    """BEIR qrels/<split>.tsv: a header `query-id<TAB>corpus-id<TAB>score`, then integer judgments.

    A negative score (Touché's -2, a -1 meaning "judged, not relevant") is read as 0, judged not
    relevant, as trec_eval treats every score <= 0; the reader logs how many, and the first line.
    A score that is not an integer ("0.5", "yes") is refused with the file and line.
    """
    first = True
    negative, first_negative = 0, None
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
        if r < 0:
            negative += 1
            first_negative = first_negative or n
            r = 0
        yield len(line), qid, pid, r, n
    if negative:
        logger.warning(
            "%s: %d judgment(s) with a negative score (first on line %d) read as 0: judged, not relevant",
            path, negative, first_negative,
        )
