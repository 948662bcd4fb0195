"""Training files: the Margin-MSE teacher TSV, DPR / LEAD biencoder JSON and PROD JSON.

Training readers yield GROUPS_SCHEMA batches whose texts may be null: the importer fills them
from the imported corpus and queries tables (and checks every id on the way)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from densekit.data.formats.base import (
    BATCH_BYTES,
    BATCH_ROWS,
    ErrorPolicy,
    batched,
    check_id,
    iter_lines,
    json_id,
    json_text,
    parse_float,
    split_columns,
    with_line,
)
from densekit.data.formats.jsonstream import iter_json_records
from densekit.data.records import GROUPS_SCHEMA, PASSAGE_TYPE

GROUP_READER_SCHEMA = with_line(GROUPS_SCHEMA)


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
        cols = split_columns(line, "\t", 5, path, n, policy, layout)
        if cols is None:
            continue
        ps, ns, q, pp, np_ = cols
        ok = all(
            check_id(v, path, n, what, policy) for v, what in ((q, "qid"), (pp, "pos_pid"), (np_, "neg_pid"))
        )
        if not ok:
            continue
        fps = parse_float(ps, path, n, "pos_score", policy)
        if fps is None:
            continue
        fns = parse_float(ns, path, n, "neg_score", policy)
        if fns is None:
            continue
        for k, v in (("ps", fps), ("ns", fns), ("q", q), ("pp", pp), ("np", np_), ("line", n)):
            cols_[k].append(v)
        nbytes += len(line)
        if 2 * len(cols_["q"]) >= batch_rows or nbytes >= batch_bytes:  # 2 passages a row
            yield flush()
    if cols_["q"]:
        yield flush()


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
            query = json_text(obj, "question", path, n, policy, what)
            if query is None:
                continue
            qid_field = next((k for k in ("qid", "query_id", "id") if k in obj), None)
            if qid_field:
                qid = json_id(obj, qid_field, path, n, policy, what)
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

    yield from batched(rows(), _GroupBatcher(batch_rows, batch_bytes))


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
            qid = json_id(obj, "query_id", path, n, policy, what)
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

    yield from batched(rows(), _GroupBatcher(batch_rows, batch_bytes))
