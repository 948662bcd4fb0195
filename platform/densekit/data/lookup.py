"""Find rows of an imported table by id with bounded memory (corpus passages by pid, queries by qid).

Design: a memory-mapped, uncompressed Arrow IPC copy of the table (random access to any row
without decompressing a Parquet row group) plus the 64-bit hashes of its ids, sorted, with the
row position of each (two memory-mapped .npy files, 16 bytes per row). A look-up hashes the wanted
ids, binary-searches the sorted hashes and compares the id stored at the found row exactly, so a
hash collision can never return the wrong row. For MS MARCO passages (8.8M rows) the index is
141 MB on disk and only the pages touched are read; the IPC copy is about the size of the text.

Also here: `hash_ids` and `HashRuns`, the bounded-memory duplicate detector used by the importer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densekit.artifacts import atomic_path, iter_table, manifest_file, read_manifest
from densekit.errors import InputError

logger = logging.getLogger(__name__)

HASHES, ORDER, ROWS, META = "hashes.npy", "order.npy", "rows.arrow", "lookup.json"
LOOKUP_VERSION = 1


def hash_ids(ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """64-bit hashes of string ids, shape [n] uint64; deterministic across processes and machines
    (pandas' SipHash with its fixed key)."""
    import pandas as pd

    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        values = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    else:
        values = np.asarray(list(ids), dtype=object)
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(values, categorize=False)


class HashRuns:
    """A growing set of 64-bit hashes kept as a few sorted runs (merged like a binary counter).

    8 bytes per distinct id, O(log n) runs, O(n log n) total work: MS MARCO's 8.8M passage ids
    take 71 MB. Membership is by hash only; callers re-check suspects exactly.
    """

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def seen_then_add(self, hashes: np.ndarray) -> np.ndarray:
        """Mark, for each hash, whether it was seen before (in earlier calls or earlier in this
        array); then add them all. Returns bool [n]."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        if len(hashes) == 0:
            return np.zeros(0, dtype=bool)
        before = self.contains(hashes)
        uniq, first = np.unique(hashes, return_index=True)
        seen = np.ones(len(hashes), dtype=bool)
        seen[first] = False  # repeats within this array
        seen |= before
        new = uniq[~before[first]]
        if len(new):
            self._add(new)
        return seen

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        hashes = np.asarray(hashes, dtype=np.uint64)
        out = np.zeros(len(hashes), dtype=bool)
        for run in self.runs:
            if len(run):
                idx = np.searchsorted(run, hashes)
                idx[idx == len(run)] = 0
                out |= run[idx] == hashes
        return out

    def _add(self, sorted_unique: np.ndarray) -> None:
        run = sorted_unique
        # Merge while the last run is not bigger than the new one: keeps O(log n) runs.
        while self.runs and len(self.runs[-1]) <= 2 * len(run):
            run = np.union1d(self.runs.pop(), run)
        self.runs.append(run)


def _manifest_digest(table_dir: Path) -> str:
    return hashlib.sha256(manifest_file(table_dir).read_bytes()).hexdigest()


class TableLookup:
    """Rows of one imported table, found by id (see the module docstring for the design).

    Example:
        corpus = TableLookup.for_table("runs/msmarco/corpus", key="pid")
        pos = corpus.find(["7", "42", "nope"])          # int64 [3]: row positions, -1 if absent
        texts = corpus.take(pos[pos >= 0], "text")       # pa.Array of the texts
    """

    def __init__(self, directory: str | Path, _cleanup: Path | None = None):
        self.directory = Path(directory)
        meta = json.loads((self.directory / META).read_text())
        self.key: str = meta["key"]
        self.source = meta["source"]
        self.hashes = np.load(self.directory / HASHES, mmap_mode="r")  # sorted uint64 [n]
        self.order = np.load(self.directory / ORDER, mmap_mode="r")  # int64 [n]: row of each hash
        self._mmap = pa.memory_map(str(self.directory / ROWS))
        self.table = pa.ipc.open_file(self._mmap).read_all()  # zero-copy views into the mmap
        self._keys = self.table.column(self.key)
        self._cleanup = _cleanup

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def columns(self) -> list[str]:
        return self.table.column_names

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        table_dir: str | Path,
        out_dir: str | Path,
        key: str,
        columns: Sequence[str] | None = None,
    ) -> TableLookup:
        """Write the lookup of `table_dir` (a complete table) keyed by column `key` into `out_dir`.

        Args:
            columns: columns to copy besides the key (None: all of them).

        Raises:
            InputError: if two rows share an id.
        """
        table_dir, out_dir = Path(table_dir), Path(out_dir)
        read_manifest(table_dir)
        digest = _manifest_digest(table_dir)
        first = next(iter_table(table_dir, batch_size=1))
        names = [key] + [c for c in (columns if columns is not None else first.schema.names) if c != key]
        schema = pa.schema([first.schema.field(n) for n in names])
        hashes = []
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            with pa.OSFile(str(tmp / ROWS), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for batch in iter_table(table_dir, columns=names, batch_size=65_536):
                    writer.write_batch(batch)
                    hashes.append(hash_ids(batch.column(key)))
            h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
            order = np.argsort(h, kind="stable").astype(np.int64)
            h = h[order]
            dup = np.flatnonzero(h[1:] == h[:-1])
            if len(dup):
                ids = pa.ipc.open_file(pa.memory_map(str(tmp / ROWS))).read_all().column(key)
                for i in dup:
                    a, b = ids[int(order[i])].as_py(), ids[int(order[i + 1])].as_py()
                    if a == b:
                        raise InputError(table_dir, None, f"{key} {a!r} appears twice; expected unique ids")
            np.save(tmp / HASHES, h)
            np.save(tmp / ORDER, order)
            meta = {"version": LOOKUP_VERSION, "key": key, "columns": names, "rows": len(h),
                    "source": str(table_dir), "source_manifest_sha256": digest}
            (tmp / META).write_text(json.dumps(meta, indent=2))
        logger.info("built id lookup of %s (%d rows, key %s) in %s", table_dir, len(h), key, out_dir)
        return cls(out_dir)

    @classmethod
    def for_table(
        cls,
        table_dir: str | Path,
        key: str,
        columns: Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        scratch_dir: str | Path | None = None,
    ) -> TableLookup:
        """The lookup of `table_dir`, reused if a current one exists, else built.

        It is kept in `cache_dir` if given (other steps reuse it). Otherwise it is built in a
        temporary folder inside `scratch_dir` (the step's own output; default: the system's
        temporary folder) and removed by `close()`: nothing is ever written into the input table.
        A current `<table_dir>/lookup-<key>/` that an older densekit wrote there is still read. A
        lookup made from an older version of the table (its manifest changed) is rebuilt.
        """
        table_dir = Path(table_dir)
        read_manifest(table_dir)
        want = None if columns is None else [key] + [c for c in columns if c != key]
        if cache_dir:  # one shared cache folder: tell tables of the same name apart by their path
            tag = hashlib.sha256(str(table_dir.resolve()).encode()).hexdigest()[:10]
            where = Path(cache_dir) / f"{table_dir.name}-{tag}-{key}"
            if cls._current(where, table_dir, key, want):
                return cls(where)
            try:
                return cls.build(table_dir, where, key, columns)
            except PermissionError:
                logger.info("%s is not writable: building the lookup in a temporary folder", where)
        else:
            old = table_dir / f"lookup-{key}"  # read only: densekit no longer writes into inputs
            if cls._current(old, table_dir, key, want):
                return cls(old)
        if scratch_dir is not None:
            Path(scratch_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".densekit-lookup-", dir=scratch_dir))
        try:
            lookup = cls.build(table_dir, tmp / "lookup", key, columns)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        lookup._cleanup = tmp
        return lookup

    @staticmethod
    def _current(where: Path, table_dir: Path, key: str, want: list[str] | None) -> bool:
        """Whether `where` holds a lookup of this very version of `table_dir` with `want` columns."""
        if not (where / META).exists():
            return False
        try:
            meta = json.loads((where / META).read_text())
            fresh = meta.get("source_manifest_sha256") == _manifest_digest(table_dir) and meta["key"] == key
            return bool(fresh and (want is None or set(want) <= set(meta["columns"]))
                        and meta.get("version") == LOOKUP_VERSION)
        except (OSError, ValueError, KeyError):
            return False

    # --- querying --------------------------------------------------------------------------------

    def find(self, ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
        """Row positions of `ids` (shape [n] int64), -1 where the table has no such id."""
        if not isinstance(ids, (pa.Array, pa.ChunkedArray)):
            ids = pa.array(list(ids), pa.string())
        n = len(ids)
        out = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self.hashes) == 0:
            return out
        h = hash_ids(ids)
        idx = np.searchsorted(self.hashes, h)
        inside = idx < len(self.hashes)
        cand = np.flatnonzero(inside)
        cand = cand[np.asarray(self.hashes[idx[cand]]) == h[cand]]
        if len(cand) == 0:
            return out
        rows = np.asarray(self.order[idx[cand]])
        stored = self._keys.take(pa.array(rows))
        wanted = ids.take(pa.array(cand)) if isinstance(ids, pa.Array) else pa.chunked_array(ids).take(pa.array(cand))
        equal = pc.equal(stored, wanted).to_numpy(zero_copy_only=False)
        out[cand[equal]] = rows[equal]
        # Hash matched but id differs: another row may share the hash (a true collision).
        for j in cand[~equal]:
            want = ids[int(j)].as_py()
            k = int(idx[j]) + 1
            while k < len(self.hashes) and self.hashes[k] == h[j]:
                r = int(self.order[k])
                if self._keys[r].as_py() == want:
                    out[j] = r
                    break
                k += 1
        return out

    def take(self, positions: np.ndarray | Iterable[int], column: str) -> pa.Array:
        """Values of `column` at row `positions` (all >= 0), as one Arrow array."""
        taken = self.table.column(column).take(pa.array(np.asarray(positions, dtype=np.int64)))
        return taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken

    def close(self) -> None:
        self.table = None  # type: ignore[assignment]
        self._keys = None
        self._mmap.close()
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None

    def __enter__(self) -> TableLookup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
