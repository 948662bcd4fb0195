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


def _write_embeddings(directory: Path, vectors, ids=None, rows_per_part: int = 1_000_000,
                      fingerprint: str = "fp-A", model: str = "model-A", metric: str = "ip") -> Path:
    """An embeddings table as `densekit encode` writes it (shards = Parquet parts + manifest)."""
    from densekit.data import records as R

    n, dim = vectors.shape
    ids = ids if ids is not None else [f"p{i}" for i in range(n)]
    values = pa.array(vectors.astype("float32").reshape(-1), pa.float32())
    columns = {R.ID: pa.array(ids, pa.string()), R.EMBEDDING: pa.FixedSizeListArray.from_arrays(values, dim)}
    return _write_table(directory, R.embeddings_schema(dim), columns, rows_per_part=rows_per_part,
                        step="encode", extra={"dim": dim, "metric": metric, "model": model,
                                              "model_fingerprint": fingerprint})


@pytest.fixture
def write_embeddings():
    """write_embeddings(dir, vectors [N, D], ids=None, rows_per_part=..., fingerprint=..., metric=...)."""
    return _write_embeddings


def clustered_vectors(n: int, dim: int, clusters: int, seed: int):
    """Unit vectors around `clusters` centres: real embeddings are clustered, uniform noise is not."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype("float32")


@pytest.fixture
def make_clustered():
    return clustered_vectors
