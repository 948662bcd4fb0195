"""Fixtures of the retrieval-step tests: small tables written the way the steps write them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, write_manifest


def _write_table(directory: Path, schema: pa.Schema, columns: dict, extra: dict | None = None,
                 rows_per_part: int = 1_000_000, step: str = "test") -> Path:
    directory = Path(directory)
    with TableWriter(directory, schema, rows_per_part=rows_per_part) as w:
        w.write(pa.table(columns, schema=schema))
    write_manifest(directory, step, extra)
    return directory


@pytest.fixture
def write_table():
    """write_table(dir, schema, {column: values}, extra=None, rows_per_part=...) -> dir (complete)."""
    return _write_table
