"""Streaming readers and writers for the text formats at the edges: MS MARCO, BEIR, TREC, DPR/LEAD,
PROD and the Margin-MSE teacher TSV.

Readers read bytes and decode line by line (so invalid UTF-8 is reported with its line number) and
yield Arrow record batches of at most `batch_rows` rows and about `batch_bytes` bytes, each with a
`line` column (the 1-based source line of the row). Bad rows go through an `ErrorPolicy`: raise an
InputError naming file, line and what was expected, or count the row under a reason and skip it.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densekit.data.records import (
    CORPUS_SCHEMA,
    GROUPS_SCHEMA,
    NEGATIVES,
    PASSAGE_TYPE,
    PID,
    POSITIVES,
    QID,
    QRELS_SCHEMA,
    QUERIES_SCHEMA,
    RANK,
    RELEVANCE,
    RUN_SCHEMA,
    SCORE,
    TEXT,
    TITLE,
)
from densekit.errors import InputError

logger = logging.getLogger(__name__)

LINE = "line"  # extra column of every reader batch: 1-based source line (JSON arrays: record start)
BATCH_ROWS = 8192
BATCH_BYTES = 32 << 20
BOM = b"\xef\xbb\xbf"

# Ids end up in whitespace-separated TREC files and in pytrec_eval dicts: no whitespace, no controls.
_BAD_ID = re.compile(r"[\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


# --- errors ----------------------------------------------------------------------------------------


class ErrorPolicy:
    """What to do with a bad row: raise (default) or skip it, counting it under a reason.

    Reasons used: malformed_line (column count, bad JSON record), bad_number, empty_id, bad_id
    (whitespace or control characters), bad_text (NUL bytes), invalid_utf8, missing_field,
    duplicate_id, unknown_qid, unknown_pid, no_positive.

    Args:
        on_error: "raise" or "skip".
        max_logged: with "skip", log at most this many skipped rows (all are counted).
        silent: count nothing and log nothing (re-scans of a file already checked once).
    """

    def __init__(self, on_error: str = "raise", max_logged: int = 20, silent: bool = False):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error = on_error
        self.max_logged = max_logged
        self.silent = silent
        self.counts: Counter[str] = Counter()
        self.logged = 0

    @property
    def skipping(self) -> bool:
        return self.on_error == "skip"

    def bad(self, path: str | Path, line: int | None, reason: str, problem: str) -> None:
        """Report one bad row: raises InputError, or counts (and maybe logs) it and returns."""
        if self.on_error == "raise":
            raise InputError(path, line, problem)
        if self.silent:
            return
        self.counts[reason] += 1
        if self.logged < self.max_logged:
            self.logged += 1
            where = f"{path}:{line}" if line is not None else str(path)
            logger.warning("skipped %s: %s (%s)", where, problem, reason)
            if self.logged == self.max_logged:
                logger.warning("further skipped rows are counted, not logged")

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def check_id(value: str, path, line, what: str, policy: ErrorPolicy) -> bool:
    """True if `value` is a usable id; otherwise report it (raise or count) and return False."""
    if not value:
        policy.bad(path, line, "empty_id", f"empty {what}; expected a non-empty id")
        return False
    if _BAD_ID.search(value):
        policy.bad(
            path,
            line,
            "bad_id",
            f"{what} {value!r} contains whitespace or a control character; expected an id without "
            "them (TREC files split on whitespace)",
        )
        return False
    return True


def _check_text(value: str, path, line, what: str, policy: ErrorPolicy) -> bool:
    if "\x00" in value:
        policy.bad(path, line, "bad_text", f"{what} contains a NUL byte; expected text (binary data?)")
        return False
    return True


def _int(value: str, path, line, what: str, policy: ErrorPolicy) -> int | None:
    try:
        return int(value)
    except ValueError:
        policy.bad(path, line, "bad_number", f"{what} {value!r} is not an integer")
        return None


def _float(value: str, path, line, what: str, policy: ErrorPolicy) -> float | None:
    try:
        x = float(value)
    except ValueError:
        x = math.nan
        ok = False
    else:
        ok = math.isfinite(x)
    if not ok:
        policy.bad(path, line, "bad_number", f"{what} {value!r} is not a finite number")
        return None
    return x


# --- lines and batches -----------------------------------------------------------------------------


def iter_lines(path: str | Path, policy: ErrorPolicy, what: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its end) for every non-blank line of `path`.

    A UTF-8 BOM is dropped, CRLF is accepted, blank lines are ignored. Invalid UTF-8 is reported
    per line. An empty file (no non-blank line) raises InputError whatever the policy.
    """
    path = Path(path)
    n = 0
    seen = False
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(BOM):
                raw = raw[3:]
            raw = raw.rstrip(b"\r\n")
            if not raw.strip(b" "):  # a line of tabs is not blank: it has (empty) columns
                continue
            seen = True
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                policy.bad(
                    path, n, "invalid_utf8", f"invalid UTF-8 at byte {e.start + 1} of the line; expected UTF-8 text"
                )
                continue
            yield n, line
    if not seen:
        raise InputError(path, None, f"empty file; expected {what}")


class _Batcher:
    """Collects rows column by column; `full()` says when a batch of bounded size is ready."""

    def __init__(self, schema: pa.Schema, batch_rows: int, batch_bytes: int):
        self.schema = schema
        self.names = schema.names
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self._reset()

    def _reset(self) -> None:
        self.cols: dict[str, list] = {n: [] for n in self.names}
        self.rows = 0
        self.bytes = 0

    def add(self, nbytes: int, *values) -> None:
        for name, v in zip(self.names, values):
            self.cols[name].append(v)
        self.rows += 1
        self.bytes += nbytes

    def full(self) -> bool:
        return self.rows >= self.batch_rows or self.bytes >= self.batch_bytes

    def take(self) -> pa.RecordBatch:
        arrays = [pa.array(self.cols[f.name], type=f.type) for f in self.schema]
        self._reset()
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _batched(rows: Iterable[tuple], batcher: _Batcher | _GroupBatcher) -> Iterator[pa.RecordBatch]:
    """Batches from `(nbytes, *values)` row tuples: every full batch, then the last partial one."""
    for row in rows:
        batcher.add(*row)
        if batcher.full():
            yield batcher.take()
    if batcher.rows:
        yield batcher.take()


def _with_line(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(LINE, pa.int64()))


def _split(line: str, sep: str | None, n: int, path, lineno, policy, layout: str) -> list[str] | None:
    cols = line.split(sep) if sep else line.split()
    if len(cols) != n:
        policy.bad(
            path,
            lineno,
            "malformed_line",
            f"expected {n} {'tab' if sep == chr(9) else 'whitespace'}-separated columns ({layout}), got {len(cols)}",
        )
        return None
    return cols


# --- corpus and queries TSV ------------------------------------------------------------------------


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
    schema = _with_line(CORPUS_SCHEMA if corpus else QUERIES_SCHEMA)
    key = PID if corpus else QID

    def rows() -> Iterator[tuple]:
        for n, line in iter_lines(path, policy, "lines of id<TAB>text"):
            cols = _split(line, "\t", 2, path, n, policy, "id<TAB>text")
            if cols is None:
                continue
            id_, text = cols
            if not check_id(id_, path, n, key, policy) or not _check_text(text, path, n, "text", policy):
                continue
            if corpus:
                yield len(line), id_, text, "", n
            else:
                yield len(line), id_, text, n

    yield from _batched(rows(), _Batcher(schema, batch_rows, batch_bytes))


def read_msmarco_docs(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """MS MARCO msmarco-docs.tsv: `docid<TAB>url<TAB>title<TAB>body` -> corpus (pid, text=body,
    title); the URL is dropped (as LEAD does)."""
    policy = policy or ErrorPolicy()
    schema = _with_line(CORPUS_SCHEMA)

    def rows() -> Iterator[tuple]:
        for n, line in iter_lines(path, policy, "lines of docid<TAB>url<TAB>title<TAB>body"):
            cols = _split(line, "\t", 4, path, n, policy, "docid<TAB>url<TAB>title<TAB>body")
            if cols is None:
                continue
            id_, _url, title, body = cols
            if not check_id(id_, path, n, "docid", policy) or not _check_text(line, path, n, "line", policy):
                continue
            yield len(line), id_, body, title, n

    yield from _batched(rows(), _Batcher(schema, batch_rows, batch_bytes))


DPR_HEADER = ["id", "text", "title"]


def read_dpr_tsv(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """DPR / LEAD psgs_w100.tsv: `id<TAB>text<TAB>title`. DPR's file has a header line `id text
    title`, LEAD's has none: a first line equal to that header is skipped, any other is data."""
    policy = policy or ErrorPolicy()
    schema = _with_line(CORPUS_SCHEMA)

    def rows() -> Iterator[tuple]:
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
            cols = _split(line, "\t", 3, path, n, policy, "id<TAB>text<TAB>title")
            if cols is None:
                continue
            id_, text, title = cols
            if not check_id(id_, path, n, "id", policy) or not _check_text(line, path, n, "line", policy):
                continue
            yield len(line), id_, text, title, n

    yield from _batched(rows(), _Batcher(schema, batch_rows, batch_bytes))


# --- BEIR ------------------------------------------------------------------------------------------


def _json_id(obj: dict, field: str, path, n, policy, what: str) -> str | None:
    if field not in obj:
        policy.bad(path, n, "missing_field", f"missing field '{field}'; expected {what}")
        return None
    v = obj[field]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        policy.bad(path, n, "malformed_line", f"field '{field}' is {type(v).__name__}; expected a string id")
        return None
    v = str(v)
    return v if check_id(v, path, n, field, policy) else None


def _json_text(obj: dict, field: str, path, n, policy, what: str, required: bool = True) -> str | None:
    if field not in obj or obj[field] is None:
        if not required:
            return ""
        policy.bad(path, n, "missing_field", f"missing field '{field}'; expected {what}")
        return None
    v = obj[field]
    if not isinstance(v, str):
        policy.bad(path, n, "malformed_line", f"field '{field}' is {type(v).__name__}; expected a string")
        return None
    return v if _check_text(v, path, n, field, policy) else None


def _iter_jsonl(path, policy: ErrorPolicy, what: str) -> Iterator[tuple[int, str, dict]]:
    for n, line in iter_lines(path, policy, what):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            policy.bad(path, n, "malformed_line", f"invalid JSON ({e.msg} at column {e.colno}); expected {what}")
            continue
        if not isinstance(obj, dict):
            policy.bad(path, n, "malformed_line", f"a JSON {type(obj).__name__}; expected {what}")
            continue
        yield n, line, obj


def read_beir_corpus(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """BEIR corpus.jsonl: one `{"_id", "title", "text", ...}` object per line (title optional)."""
    policy = policy or ErrorPolicy()
    schema = _with_line(CORPUS_SCHEMA)
    what = 'one JSON object per line with "_id", "title" and "text"'

    def rows() -> Iterator[tuple]:
        for n, line, obj in _iter_jsonl(path, policy, what):
            id_ = _json_id(obj, "_id", path, n, policy, what)
            if id_ is None:
                continue
            text = _json_text(obj, "text", path, n, policy, what)
            if text is None:
                continue
            title = _json_text(obj, "title", path, n, policy, what, required=False)
            if title is None:
                continue
            yield len(line), id_, text, title, n

    yield from _batched(rows(), _Batcher(schema, batch_rows, batch_bytes))


def read_beir_queries(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """BEIR queries.jsonl: one `{"_id", "text", ...}` object per line."""
    policy = policy or ErrorPolicy()
    schema = _with_line(QUERIES_SCHEMA)
    what = 'one JSON object per line with "_id" and "text"'

    def rows() -> Iterator[tuple]:
        for n, line, obj in _iter_jsonl(path, policy, what):
            id_ = _json_id(obj, "_id", path, n, policy, what)
            if id_ is None:
                continue
            text = _json_text(obj, "text", path, n, policy, what)
            if text is None:
                continue
            yield len(line), id_, text, n

    yield from _batched(rows(), _Batcher(schema, batch_rows, batch_bytes))


BEIR_QRELS_HEADER = ["query-id", "corpus-id", "score"]


def read_beir_qrels(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """BEIR qrels/<split>.tsv: a header `query-id<TAB>corpus-id<TAB>score`, then integer judgments."""
    policy = policy or ErrorPolicy()
    schema = _with_line(QRELS_SCHEMA)

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
            cols = _split(line, "\t", 3, path, n, policy, "query-id<TAB>corpus-id<TAB>score")
            if cols is None:
                continue
            qid, pid, rel = (cols[i] for i in order)
            if not check_id(qid, path, n, "query-id", policy) or not check_id(pid, path, n, "corpus-id", policy):
                continue
            r = _int(rel, path, n, "score", policy)
            if r is None:
                continue
            yield len(line), qid, pid, r, n

    yield from _batched(rows(), _Batcher(schema, batch_rows, batch_bytes))


# --- TREC ------------------------------------------------------------------------------------------


def read_trec_qrels(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """TREC qrels: `qid iter docid rel` (whitespace-separated; `iter` is ignored, usually 0)."""
    policy = policy or ErrorPolicy()
    schema = _with_line(QRELS_SCHEMA)

    def rows() -> Iterator[tuple]:
        for n, line in iter_lines(path, policy, "lines of qid 0 docid relevance"):
            cols = _split(line, None, 4, path, n, policy, "qid 0 docid relevance")
            if cols is None:
                continue
            qid, _, pid, rel = cols
            if not check_id(qid, path, n, "qid", policy) or not check_id(pid, path, n, "docid", policy):
                continue
            r = _int(rel, path, n, "relevance", policy)
            if r is None:
                continue
            yield len(line), qid, pid, r, n

    yield from _batched(rows(), _Batcher(schema, batch_rows, batch_bytes))


def read_trec_run(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """TREC run: `qid Q0 docid rank score tag` (whitespace-separated). The tag is not kept."""
    policy = policy or ErrorPolicy()
    schema = _with_line(RUN_SCHEMA)

    def rows() -> Iterator[tuple]:
        for n, line in iter_lines(path, policy, "lines of qid Q0 docid rank score tag"):
            cols = _split(line, None, 6, path, n, policy, "qid Q0 docid rank score tag")
            if cols is None:
                continue
            qid, _, pid, rank, score, _tag = cols
            if not check_id(qid, path, n, "qid", policy) or not check_id(pid, path, n, "docid", policy):
                continue
            r = _int(rank, path, n, "rank", policy)
            if r is None:
                continue
            s = _float(score, path, n, "score", policy)
            if s is None:
                continue
            yield len(line), qid, pid, r, s, n

    yield from _batched(rows(), _Batcher(schema, batch_rows, batch_bytes))


# --- training files --------------------------------------------------------------------------------
# Training readers yield GROUPS_SCHEMA batches whose texts may be null: the importer fills them
# from the imported corpus and queries tables (and checks every id on the way).

GROUP_READER_SCHEMA = _with_line(GROUPS_SCHEMA)


def _passages(pids: list[list[str]], texts=None, titles=None, scores=None) -> pa.ListArray:
    """list<PASSAGE_TYPE> from per-row lists of pids (texts/titles/scores aligned, or None)."""
    offsets = np.zeros(len(pids) + 1, dtype=np.int32)
    np.cumsum([len(p) for p in pids], out=offsets[1:])
    flat = [p for row in pids for p in row]

    def col(rows, typ):
        if rows is None:
            return pa.nulls(len(flat), typ)
        return pa.array([v for row in rows for v in row], type=typ)

    struct = pa.StructArray.from_arrays(
        [pa.array(flat, pa.string()), col(texts, pa.string()), col(titles, pa.string()), col(scores, pa.float32())],
        fields=list(PASSAGE_TYPE),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), struct)


class _GroupBatcher:
    def __init__(self, batch_rows: int, batch_bytes: int):
        self.batch_rows, self.batch_bytes = batch_rows, batch_bytes
        self._reset()

    def _reset(self):
        self.qid, self.query, self.lines = [], [], []
        self.pos: dict[str, list] = {"pid": [], "text": [], "title": [], "score": []}
        self.neg: dict[str, list] = {"pid": [], "text": [], "title": [], "score": []}
        self.bytes = 0
        self.passages = 0

    def add(self, nbytes, qid, query, pos, neg, line):
        """pos/neg: lists of (pid, text|None, title|None, score|None)."""
        self.qid.append(qid)
        self.query.append(query)
        self.lines.append(line)
        for dst, items in ((self.pos, pos), (self.neg, neg)):
            for i, k in enumerate(("pid", "text", "title", "score")):
                dst[k].append([p[i] for p in items])
        self.bytes += nbytes
        self.passages += len(pos) + len(neg)

    def full(self) -> bool:
        # Passages, not groups, are counted: the importer fills each with its text from the corpus
        # (a 100-negative MS MARCO document group is ~700 KB once filled).
        return self.passages >= self.batch_rows or self.bytes >= self.batch_bytes

    @property
    def rows(self) -> int:
        return len(self.qid)

    def take(self) -> pa.RecordBatch:
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(self.qid, pa.string()),
                pa.array(self.query, pa.string()),
                _passages(self.pos["pid"], self.pos["text"], self.pos["title"], self.pos["score"]),
                _passages(self.neg["pid"], self.neg["text"], self.neg["title"], self.neg["score"]),
                pa.array(self.lines, pa.int64()),
            ],
            schema=GROUP_READER_SCHEMA,
        )
        self._reset()
        return batch


def read_margin_mse_tsv(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """Margin-MSE teacher scores: `pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`.

    Each row becomes one group: one positive and one negative carrying their teacher scores
    (texts null until the importer fills them).
    """
    policy = policy or ErrorPolicy()
    layout = "pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid"
    cols_: dict[str, list] = {k: [] for k in ("ps", "ns", "q", "pp", "np", "line")}
    nbytes = 0

    def flush() -> pa.RecordBatch:
        nonlocal nbytes
        n = len(cols_["q"])
        offsets = pa.array(np.arange(n + 1, dtype=np.int32))
        nulls = pa.nulls(n, pa.string())

        def side(pids, scores):
            s = pa.StructArray.from_arrays(
                [pa.array(pids, pa.string()), nulls, nulls, pa.array(scores, pa.float32())],
                fields=list(PASSAGE_TYPE),
            )
            return pa.ListArray.from_arrays(offsets, s)

        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(cols_["q"], pa.string()),
                nulls,
                side(cols_["pp"], cols_["ps"]),
                side(cols_["np"], cols_["ns"]),
                pa.array(cols_["line"], pa.int64()),
            ],
            schema=GROUP_READER_SCHEMA,
        )
        for v in cols_.values():
            v.clear()
        nbytes = 0
        return batch

    for n, line in iter_lines(path, policy, f"lines of {layout}"):
        cols = _split(line, "\t", 5, path, n, policy, layout)
        if cols is None:
            continue
        ps, ns, q, pp, np_ = cols
        ok = all(
            check_id(v, path, n, what, policy) for v, what in ((q, "qid"), (pp, "pos_pid"), (np_, "neg_pid"))
        )
        if not ok:
            continue
        fps = _float(ps, path, n, "pos_score", policy)
        if fps is None:
            continue
        fns = _float(ns, path, n, "neg_score", policy)
        if fns is None:
            continue
        for k, v in (("ps", fps), ("ns", fns), ("q", q), ("pp", pp), ("np", np_), ("line", n)):
            cols_[k].append(v)
        nbytes += len(line)
        if 2 * len(cols_["q"]) >= batch_rows or nbytes >= batch_bytes:  # 2 passages a row
            yield flush()
    if cols_["q"]:
        yield flush()


class _TextChunks:
    """Decode a binary file chunk by chunk as UTF-8; invalid bytes raise InputError with the line."""

    def __init__(self, f, path, chunk: int | None = None):
        self.f, self.path, self.chunk = f, path, chunk or JSON_CHUNK
        self.dec = codecs.getincrementaldecoder("utf-8")("strict")
        self.newlines = 0  # newlines in the bytes already decoded
        self.first = True
        self.eof = False

    def read(self) -> str | None:
        if self.eof:
            return None
        data = self.f.read(self.chunk)
        if self.first:
            self.first = False
            if data.startswith(BOM):
                data = data[3:]
        final = not data
        try:
            text = self.dec.decode(data, final=final)
        except UnicodeDecodeError as e:
            line = self.newlines + e.object.count(b"\n", 0, e.start) + 1
            raise InputError(self.path, line, "invalid UTF-8; expected UTF-8 JSON") from None
        self.newlines += data.count(b"\n")
        if final:
            self.eof = True
        return text


JSON_CHUNK = 1 << 20  # bytes read at a time by iter_json_records
_WS = re.compile(r"[ \t\r\n]*")
MAX_RECORD_CHARS = 256 << 20


def iter_json_records(path: str | Path, what: str) -> Iterator[tuple[int, int, dict]]:
    """Stream the objects of a JSON array (or of JSON Lines) without loading the file.

    Yields (1-based record number, 1-based line where the record starts, object). Works on files
    of many GB, pretty-printed or on one line: records are decoded one at a time with
    `json.JSONDecoder.raw_decode` from a sliding text buffer. Syntax errors name the line.
    """
    path = Path(path)
    dec = json.JSONDecoder()
    with open(path, "rb") as f:
        src = _TextChunks(f, path)
        buf, pos = "", 0
        cur_pos, cur_line = 0, 1  # line-number cursor: buf[cur_pos] is on line cur_line

        def line_at(p: int) -> int:
            nonlocal cur_pos, cur_line
            if p < cur_pos:  # never happens for forward scans; stay correct anyway
                return cur_line - buf.count("\n", p, cur_pos)
            cur_line += buf.count("\n", cur_pos, p)
            cur_pos = p
            return cur_line

        def more() -> bool:
            nonlocal buf, pos, cur_pos
            chunk = src.read()
            if chunk is None:
                return False
            line_at(pos)
            buf = buf[pos:] + chunk
            cur_pos -= pos
            pos = 0
            return True

        def skip_ws() -> bool:
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos < len(buf):
                    return True
                if not more():
                    return False

        if not skip_ws():
            raise InputError(path, None, f"empty file; expected {what}")
        array = buf[pos] == "["
        if array:
            pos += 1
        elif buf[pos] != "{":
            raise InputError(path, line_at(pos), f"expected a JSON array of objects or JSON lines; {what}")
        record = 0
        while True:
            if not skip_ws():
                if array:
                    raise InputError(path, line_at(len(buf)), "unexpected end of file: the JSON array is not closed by ']'")
                break
            if array:
                if buf[pos] == "]":
                    pos += 1
                    if skip_ws():
                        raise InputError(path, line_at(pos), "unexpected data after the closing ']'")
                    break
                if record:
                    if buf[pos] != ",":
                        raise InputError(path, line_at(pos), f"expected ',' or ']' after record {record}")
                    pos += 1
                    if not skip_ws():
                        raise InputError(path, line_at(len(buf)), "unexpected end of file inside the JSON array")
            start = line_at(pos)
            last = None
            while True:
                try:
                    obj, end = dec.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    sig = (e.msg, e.pos - pos)
                    genuine = sig == last and not e.msg.startswith("Unterminated string")
                    if genuine or src.eof or len(buf) - pos > MAX_RECORD_CHARS:
                        raise InputError(
                            path, line_at(e.pos), f"invalid JSON in record {record + 1} ({e.msg}); expected {what}"
                        ) from None
                    last = sig
                    more()
            record += 1
            pos = end
            yield record, start, obj


def _ctx_id(v: Any, pid_offset: int) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return str(v + pid_offset)
    if isinstance(v, str):
        if pid_offset and v.strip().lstrip("-").isdigit():
            return str(int(v) + pid_offset)
        return v
    return None


_CTX_ID_KEYS = ("passage_id", "psg_id", "pid", "id", "_id", "docid")


def read_dpr_json(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    pid_offset: int = 0,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """DPR / LEAD `biencoder-*.json`: a JSON array of {question, answers, positive_ctxs,
    hard_negative_ctxs, negative_ctxs}.

    Contexts are ids (LEAD: 0-based ints or strings; add `pid_offset`=1 to reach psgs_w100.tsv's
    1-based ids) or dicts with passage_id (or psg_id/id) and optional text/title (DPR). The qid is
    the record's `qid`/`query_id`/`id` field if any, else its 0-based position in the file.
    Negatives are hard_negative_ctxs followed by negative_ctxs. DPR's per-context `score` is a
    retriever score, not a teacher score: it is not kept.
    """
    policy = policy or ErrorPolicy()
    what = "objects with question, positive_ctxs, hard_negative_ctxs, negative_ctxs"

    def rows() -> Iterator[tuple]:
        for rec, n, obj in iter_json_records(path, what):
            if not isinstance(obj, dict):
                policy.bad(path, n, "malformed_line", f"record {rec} is a JSON {type(obj).__name__}; expected an object")
                continue
            query = _json_text(obj, "question", path, n, policy, what)
            if query is None:
                continue
            qid_field = next((k for k in ("qid", "query_id", "id") if k in obj), None)
            if qid_field:
                qid = _json_id(obj, qid_field, path, n, policy, what)
                if qid is None:
                    continue
            else:
                qid = str(rec - 1)
            groups = []
            ok = True
            for field, required in (("positive_ctxs", True), ("hard_negative_ctxs", False), ("negative_ctxs", False)):
                items = obj.get(field)
                if items is None and not required:
                    items = []
                if not isinstance(items, list):
                    policy.bad(path, n, "missing_field", f"record {rec}: '{field}' must be a list; expected {what}")
                    ok = False
                    break
                out = []
                for item in items:
                    text = title = None
                    if isinstance(item, dict):
                        key = next((k for k in _CTX_ID_KEYS if k in item), None)
                        pid = _ctx_id(item[key], pid_offset) if key else None
                        if isinstance(item.get("text"), str):
                            text = item["text"]
                            title = item.get("title") if isinstance(item.get("title"), str) else ""
                    else:
                        pid = _ctx_id(item, pid_offset)
                    if pid is None:
                        policy.bad(
                            path, n, "missing_field",
                            f"record {rec}: a context in '{field}' has no id; expected an id or a dict with passage_id",
                        )
                        ok = False
                        break
                    if not check_id(pid, path, n, "passage id", policy):
                        ok = False
                        break
                    out.append((pid, text, title, None))
                if not ok:
                    break
                groups.append(out)
            if not ok:
                continue
            if not groups[0]:
                policy.bad(path, n, "no_positive", f"record {rec}: positive_ctxs is empty; expected at least one positive")
                continue
            yield len(query) + 16 * sum(map(len, groups)), qid, query, groups[0], groups[1] + groups[2], n

    yield from _batched(rows(), _GroupBatcher(batch_rows, batch_bytes))


def read_prod_json(
    path: str | Path,
    policy: ErrorPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """PROD training JSON: an array of {query_id, pos_id: [...], neg_id: [...], query_string}.

    query_string is optional (the importer then takes the text from the queries table).
    """
    policy = policy or ErrorPolicy()
    what = "objects with query_id, pos_id, neg_id (and query_string)"

    def rows() -> Iterator[tuple]:
        for rec, n, obj in iter_json_records(path, what):
            if not isinstance(obj, dict):
                policy.bad(path, n, "malformed_line", f"record {rec} is a JSON {type(obj).__name__}; expected an object")
                continue
            qid = _json_id(obj, "query_id", path, n, policy, what)
            if qid is None:
                continue
            query = obj.get("query_string")
            if query is not None and not isinstance(query, str):
                policy.bad(path, n, "malformed_line", f"record {rec}: query_string must be a string")
                continue
            lists = []
            for field in ("pos_id", "neg_id"):
                items = obj.get(field)
                if isinstance(items, (str, int)) and not isinstance(items, bool):
                    items = [items]
                if not isinstance(items, list):
                    policy.bad(path, n, "missing_field", f"record {rec}: missing list '{field}'; expected {what}")
                    lists = None
                    break
                ids = [_ctx_id(i, 0) for i in items]
                if any(i is None or not check_id(i, path, n, field, policy) for i in ids):
                    lists = None
                    break
                lists.append([(i, None, None, None) for i in ids])  # type: ignore[misc]
            if lists is None:
                continue
            if not lists[0]:
                policy.bad(path, n, "no_positive", f"record {rec}: pos_id is empty; expected at least one positive")
                continue
            yield 64 + 16 * (len(lists[0]) + len(lists[1])), qid, query, lists[0], lists[1], n

    yield from _batched(rows(), _GroupBatcher(batch_rows, batch_bytes))


# --- writers ---------------------------------------------------------------------------------------


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
    if not tag or _BAD_ID.search(tag):
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


READERS: dict[str, Callable[..., Iterator[pa.RecordBatch]]] = {
    "msmarco_collection": read_id_text,
    "msmarco_docs": read_msmarco_docs,
    "dpr_tsv": read_dpr_tsv,
    "beir_corpus": read_beir_corpus,
    "beir_queries": read_beir_queries,
    "beir_qrels": read_beir_qrels,
    "trec_qrels": read_trec_qrels,
    "trec_run": read_trec_run,
    "margin_mse_tsv": read_margin_mse_tsv,
    "dpr_json": read_dpr_json,
    "prod_json": read_prod_json,
}
