"""Writers: MS MARCO, BEIR, TREC and Margin-MSE text lines from Arrow batches, and `write_lines`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densekit.data.formats.base import BAD_ID
from densekit.data.formats.beir import BEIR_QRELS_HEADER
from densekit.data.records import (
    NEGATIVES,
    PID,
    POSITIVES,
    QID,
    RANK,
    RELEVANCE,
    SCORE,
    TEXT,
    TITLE,
)
from densekit.errors import InputError


def _fmt_float(arr: pa.Array) -> list[str]:
    """Shortest decimal strings that read back to the same float32 (Arrow's formatter)."""
    return pc.cast(arr.cast(pa.float32()), pa.string()).to_pylist()


_TSV_UNSAFE = re.compile(r"[\t\r\n]")


class TsvText:
    """Replaces tabs and line breaks inside text fields by spaces (TSV cannot hold them); counts."""

    def __init__(self):
        self.replaced = 0

    def __call__(self, s: str | None) -> str:
        if s is None:
            return ""
        if _TSV_UNSAFE.search(s):
            self.replaced += 1
            return _TSV_UNSAFE.sub(" ", s)
        return s


def write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Write text lines (each without its newline) as UTF-8 with LF; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        buf = []
        for line in lines:
            buf.append(line)
            n += 1
            if len(buf) >= 8192:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")
    return n


def trec_run_lines(batches: Iterable[pa.RecordBatch], tag: str) -> Iterator[str]:
    """`qid Q0 docid rank score tag` lines from run batches (qid, pid, rank, score)."""
    if not tag or BAD_ID.search(tag):
        raise ValueError(f"run tag {tag!r} must be non-empty without whitespace")
    for b in batches:
        scores = _fmt_float(b.column(SCORE))
        for q, p, r, s in zip(b.column(QID).to_pylist(), b.column(PID).to_pylist(), b.column(RANK).to_pylist(), scores):
            yield f"{q} Q0 {p} {r} {s} {tag}"


def trec_qrels_lines(batches: Iterable[pa.RecordBatch]) -> Iterator[str]:
    for b in batches:
        for q, p, r in zip(b.column(QID).to_pylist(), b.column(PID).to_pylist(), b.column(RELEVANCE).to_pylist()):
            yield f"{q} 0 {p} {r}"


def beir_qrels_lines(batches: Iterable[pa.RecordBatch]) -> Iterator[str]:
    yield "\t".join(BEIR_QRELS_HEADER)
    for b in batches:
        for q, p, r in zip(b.column(QID).to_pylist(), b.column(PID).to_pylist(), b.column(RELEVANCE).to_pylist()):
            yield f"{q}\t{p}\t{r}"


def id_text_lines(batches: Iterable[pa.RecordBatch], key: str, clean: Callable[[str], str]) -> Iterator[str]:
    """`id<TAB>text` lines (MS MARCO collection / queries) from corpus or queries batches."""
    for b in batches:
        for i, t in zip(b.column(key).to_pylist(), b.column(TEXT).to_pylist()):
            yield f"{i}\t{clean(t)}"


def beir_corpus_lines(batches: Iterable[pa.RecordBatch]) -> Iterator[str]:
    """BEIR corpus.jsonl lines, keys in BEIR's order with an empty metadata object."""
    for b in batches:
        for i, t, ti in zip(b.column(PID).to_pylist(), b.column(TEXT).to_pylist(), b.column(TITLE).to_pylist()):
            yield json.dumps({"_id": i, "title": ti or "", "text": t or "", "metadata": {}})


def beir_queries_lines(batches: Iterable[pa.RecordBatch]) -> Iterator[str]:
    for b in batches:
        for i, t in zip(b.column(QID).to_pylist(), b.column(TEXT).to_pylist()):
            yield json.dumps({"_id": i, "text": t or "", "metadata": {}})


def margin_mse_lines(batches: Iterable[pa.RecordBatch], path_for_errors: str | Path) -> Iterator[str]:
    """`pos_score neg_score qid pos_pid neg_pid` lines: one per (positive, negative) pair of each
    scored group. A passage without a teacher score is an error (run `score` first)."""
    for b in batches:
        sides = []
        for col in (POSITIVES, NEGATIVES):
            lists = b.column(col)
            flat = lists.flatten()
            scores = flat.field(SCORE)
            if scores.null_count:
                bad = pc.index(pc.is_null(scores), True).as_py()
                row = int(np.searchsorted(lists.offsets.to_numpy(), bad, side="right") - 1)
                raise InputError(
                    path_for_errors, None,
                    f"group {row + 1} (qid {b.column(QID)[row].as_py()}): passage "
                    f"{flat.field(PID)[bad].as_py()} has no teacher score; expected scored groups "
                    "(run the score step first)",
                )
            sides.append((lists.offsets.to_numpy(), flat.field(PID).to_pylist(), _fmt_float(scores)))
        (po, pp, ps), (no, np_, ns) = sides
        for row, qid in enumerate(b.column(QID).to_pylist()):
            for i in range(po[row], po[row + 1]):
                for j in range(no[row], no[row + 1]):
                    yield f"{ps[i]}\t{ns[j]}\t{qid}\t{pp[i]}\t{np_[j]}"
