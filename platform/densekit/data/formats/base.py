"""The reader skeleton every text format shares: the error policy (raise, or skip and count a bad
row), id/text/number checks, line decoding, and batching rows into Arrow record batches of bounded
size, each with a `line` column (the 1-based source line of the row).

A reader is a generator of row tuples `(nbytes, *values)` handed to `read_rows` (most through the
`row_reader` decorator, or `batched` with its own batcher); every check reports through one
`ErrorPolicy`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from densekit.errors import InputError

logger = logging.getLogger(__name__)

LINE = "line"  # extra column of every reader batch: 1-based source line (JSON arrays: record start)
BATCH_ROWS = 8192
BATCH_BYTES = 32 << 20
BOM = b"\xef\xbb\xbf"

# Ids end up in whitespace-separated TREC files and in pytrec_eval dicts: no whitespace, no controls.
BAD_ID = re.compile(r"[\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


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
    if BAD_ID.search(value):
        policy.bad(
            path,
            line,
            "bad_id",
            f"{what} {value!r} contains whitespace or a control character; expected an id without "
            "them (TREC files split on whitespace)",
        )
        return False
    return True


def check_text(value: str, path, line, what: str, policy: ErrorPolicy) -> bool:
    if "\x00" in value:
        policy.bad(path, line, "bad_text", f"{what} contains a NUL byte; expected text (binary data?)")
        return False
    return True


def parse_int(value: str, path, line, what: str, policy: ErrorPolicy) -> int | None:
    try:
        return int(value)
    except ValueError:
        policy.bad(path, line, "bad_number", f"{what} {value!r} is not an integer")
        return None


def parse_float(value: str, path, line, what: str, policy: ErrorPolicy) -> float | None:
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


class RowBatcher(Protocol):
    """What `batched` needs of a batcher (`Batcher`, or the training readers' group batcher)."""

    rows: int

    def add(self, nbytes: int, *values) -> None: ...

    def full(self) -> bool: ...

    def take(self) -> pa.RecordBatch: ...


class Batcher:
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


def batched(rows: Iterable[tuple], batcher: RowBatcher) -> Iterator[pa.RecordBatch]:
    """Batches from `(nbytes, *values)` row tuples: every full batch, then the last partial one."""
    for row in rows:
        batcher.add(*row)
        if batcher.full():
            yield batcher.take()
    if batcher.rows:
        yield batcher.take()


def with_line(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(LINE, pa.int64()))


def split_columns(line: str, sep: str | None, n: int, path, lineno, policy, layout: str) -> list[str] | None:
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


def read_rows(rows: Iterable[tuple], schema: pa.Schema, batch_rows: int, batch_bytes: int) -> Iterator[pa.RecordBatch]:
    """The common reader tail: batches of `schema` from `(nbytes, *values)` row tuples."""
    yield from batched(rows, Batcher(schema, batch_rows, batch_bytes))


RowSource = Callable[[str | Path, ErrorPolicy], Iterator[tuple]]
Reader = Callable[..., Iterator[pa.RecordBatch]]


def row_reader(schema: pa.Schema) -> Callable[[RowSource], Reader]:
    """Make a format reader from a generator of `(nbytes, *values, line)` rows of `schema`.

    The decorated `rows(path, policy)` becomes `reader(path, policy=None, batch_rows=BATCH_ROWS,
    batch_bytes=BATCH_BYTES)`, yielding record batches of `schema` plus `line` (the default policy
    raises on the first bad row).
    """
    full = with_line(schema)

    def wrap(rows: RowSource) -> Reader:
        def reader(
            path: str | Path,
            policy: ErrorPolicy | None = None,
            batch_rows: int = BATCH_ROWS,
            batch_bytes: int = BATCH_BYTES,
        ) -> Iterator[pa.RecordBatch]:
            yield from read_rows(rows(path, policy or ErrorPolicy()), full, batch_rows, batch_bytes)

        # The reader takes the row source's name and doc, but keeps its own signature.
        functools.update_wrapper(reader, rows, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        del reader.__wrapped__
        return reader

    return wrap


# --- JSON fields -----------------------------------------------------------------------------------


def json_id(obj: dict, field: str, path, n, policy, what: str) -> str | None:
    if field not in obj:
        policy.bad(path, n, "missing_field", f"missing field '{field}'; expected {what}")
        return None
    v = obj[field]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        policy.bad(path, n, "malformed_line", f"field '{field}' is {type(v).__name__}; expected a string id")
        return None
    v = str(v)
    return v if check_id(v, path, n, field, policy) else None


def json_text(obj: dict, field: str, path, n, policy, what: str, required: bool = True) -> str | None:
    if field not in obj or obj[field] is None:
        if not required:
            return ""
        policy.bad(path, n, "missing_field", f"missing field '{field}'; expected {what}")
        return None
    v = obj[field]
    if not isinstance(v, str):
        policy.bad(path, n, "malformed_line", f"field '{field}' is {type(v).__name__}; expected a string")
        return None
    return v if check_text(v, path, n, field, policy) else None


def iter_jsonl(path, policy: ErrorPolicy, what: str) -> Iterator[tuple[int, str, dict]]:
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
