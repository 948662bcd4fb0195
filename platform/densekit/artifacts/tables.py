"""Parquet tables: a directory of `part-NNNNN.parquet` files, written in bounded memory by
TableWriter and read back by iter_table / read_table."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from densekit.artifacts.files import tmp_name
from densekit.artifacts.names import PART
from densekit.errors import ConfigError, IncompleteOutputError, InputError


class TableWriter:
    """Stream record batches into a table directory as Parquet parts of at most `rows_per_part` rows.

    Each part is written under a temporary name and renamed when full, so memory stays bounded by
    one row group and a crash never leaves a truncated part. Call `close()` (or use `with`), then
    `write_manifest` on the directory (or on its parent for multi-table outputs).
    """

    def __init__(
        self,
        directory: str | Path,
        schema: pa.Schema,
        rows_per_part: int = 1_000_000,
        row_group_size: int = 65_536,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.row_group_size = row_group_size
        self.rows = 0
        self.parts = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._part_rows = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0

    def write(self, batch: pa.RecordBatch | pa.Table | Mapping[str, list]) -> None:
        if isinstance(batch, Mapping):
            batch = pa.RecordBatch.from_pydict(dict(batch), schema=self.schema)
        elif isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.write(b)
            return
        if batch.num_rows == 0:
            return
        if batch.schema != self.schema:
            batch = pa.RecordBatch.from_arrays(
                [batch.column(name).cast(field.type) for name, field in zip(self.schema.names, self.schema)],
                schema=self.schema,
            )
        while batch.num_rows:
            room = self.rows_per_part - self._part_rows - self._buffered
            head, batch = batch.slice(0, room), batch.slice(room)
            self._buffer.append(head)
            self._buffered += head.num_rows
            if self._buffered >= self.row_group_size:
                self._flush()
            if self._part_rows + self._buffered >= self.rows_per_part:
                self._flush()
                self._finish_part()

    def _flush(self) -> None:
        if not self._buffered:
            return
        if self._writer is None:
            self._tmp = tmp_name(self.directory / PART.format(self.parts))
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._writer.write_table(pa.Table.from_batches(self._buffer, schema=self.schema))
        self._part_rows += self._buffered
        self.rows += self._buffered
        self._buffer, self._buffered = [], 0

    def _finish_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        assert self._tmp is not None
        os.replace(self._tmp, self.directory / PART.format(self.parts))
        self.parts += 1
        self._writer, self._tmp, self._part_rows = None, None, 0

    def close(self) -> int:
        """Finish the last part; an empty table still gets one (empty) part so its schema is kept."""
        self._flush()
        if self._writer is None and self.parts == 0:
            self._tmp = tmp_name(self.directory / PART.format(0))
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._finish_part()
        return self.rows

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            self._writer = None

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def table_parts(directory: str | Path) -> list[Path]:
    """The Parquet files of a table directory (or the file itself), in order."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such table (expected a directory of Parquet files)")
    parts = sorted(p for p in directory.glob("*.parquet") if ".tmp-" not in p.name)
    if not parts:
        raise IncompleteOutputError(f"{directory}: holds no Parquet files")
    return parts


def open_part(path: str | Path) -> pq.ParquetFile:
    """Open one Parquet file; a truncated or corrupt one raises InputError naming it."""
    return _open_part(Path(path))


def _open_part(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(path, None, f"not a readable Parquet file ({e})") from e


def iter_table(
    directory: str | Path,
    columns: list[str] | None = None,
    batch_size: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Stream a table directory batch by batch (bounded memory)."""
    for part in table_parts(directory):
        pf = _open_part(part)
        _check_columns(part, pf.schema_arrow, columns)
        try:
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(part, None, f"corrupt Parquet data ({e})") from e


def read_table(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a whole (small) table directory into memory: queries, qrels, runs, not corpora."""
    tables = []
    for part in table_parts(directory):
        pf = _open_part(part)
        _check_columns(part, pf.schema_arrow, columns)
        try:
            tables.append(pf.read(columns=columns))
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(part, None, f"corrupt Parquet data ({e})") from e
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def table_rows(directory: str | Path) -> int:
    return sum(_open_part(p).metadata.num_rows for p in table_parts(directory))


def _check_columns(path: Path, schema: pa.Schema, columns: list[str] | None) -> None:
    if columns:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise InputError(
                path, None, f"missing column(s) {missing}; has {schema.names}"
            )
