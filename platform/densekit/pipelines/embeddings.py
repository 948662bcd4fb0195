"""Embedding tables on disk (written by encode, read by index and search) and model fingerprints.

An embeddings table is a directory of `part-NNNNN.parquet` shards, each with `id` (string) and
`embedding` (fixed-size list of float32, or float16 for storage), plus a manifest recording `dim`,
`metric` ("ip" or "l2"), `model` and `model_fingerprint`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from densekit.artifacts import open_part, read_manifest, table_parts
from densekit.data import records as R
from densekit.errors import InputError

METRICS = ("ip", "l2")

# Files that decide what a model computes. Tokenizer files count too: a changed vocabulary changes
# every embedding. READMEs, training logs and optimizer states do not.
_FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
_FINGERPRINT_SKIP = ("README", "trainer_state", "training_args", "optimizer", "scheduler", "rng_state")


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the model's weights and configs (densekit_model.json, config.json, tokenizer).

    Two directories with identical files get the same fingerprint, wherever they live; any change to
    weights, pooling or tokenizer changes it. Used to refuse searching an index with queries from
    another model.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise InputError(root, None, "model directory does not exist")
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix not in _FINGERPRINT_SUFFIXES:
            continue
        if any(p.name.startswith(s) for s in _FINGERPRINT_SKIP) or ".tmp-" in p.name:
            continue
        if any(part.startswith(".") or part.startswith("checkpoint-") for part in p.relative_to(root).parts):
            continue
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def read_embeddings_manifest(directory: str | Path) -> dict:
    """The manifest of a complete embeddings table, with `dim` checked against the data."""
    manifest = read_manifest(directory)
    dim = manifest.get("dim")
    # Every shard, not just the first: a shard of another model or size must fail here, before
    # any index is built or search started (Parquet footers only: cheap).
    for part in table_parts(directory):
        schema = open_part(part).schema_arrow
        field = schema.field(R.EMBEDDING) if R.EMBEDDING in schema.names else None
        if field is None or not pa.types.is_fixed_size_list(field.type):
            raise InputError(part, None, f"column '{R.EMBEDDING}' must be a fixed-size list of floats; "
                             f"has {schema.names}")
        if dim is None:
            dim = field.type.list_size
        if field.type.list_size != dim:
            raise InputError(part, None, f"embeddings of dimension {field.type.list_size}; expected {dim} "
                             f"(the table's {'manifest' if 'dim' in manifest else 'first shard'})")
    manifest["dim"] = dim
    manifest.setdefault("metric", "ip")
    if manifest["metric"] not in METRICS:
        raise InputError(directory, None, f"unknown metric {manifest['metric']!r}; expected ip or l2")
    return manifest


def to_matrix(column: pa.Array | pa.ChunkedArray, dim: int | None = None) -> np.ndarray:
    """A fixed-size-list column as a `[N, D]` float32 matrix (one copy at most)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    d = dim or column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(-1, d), dtype=np.float32)


def embeddings_batch(ids: list[str], vectors: np.ndarray, dtype: str = "float32") -> pa.RecordBatch:
    """`[N, D]` vectors and their ids as a record batch of the embeddings schema."""
    n, dim = vectors.shape
    arrow_type = pa.float16() if dtype == "float16" else pa.float32()
    values = pa.array(np.ascontiguousarray(vectors, dtype=dtype).reshape(-1), type=arrow_type)
    emb = pa.FixedSizeListArray.from_arrays(values, dim)
    return pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), emb],
                                      schema=R.embeddings_schema(dim, arrow_type))


def iter_embeddings(path: str | Path, batch_rows: int = 65_536) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream (ids, `[n, D]` float32) from one shard file or a whole embeddings table."""
    for part in table_parts(path):
        pf = pq.ParquetFile(part)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[R.ID, R.EMBEDDING]):
            yield batch.column(0).to_pylist(), to_matrix(batch.column(1))


class QueryEmbeddings:
    """An embeddings table held in memory and looked up by id: the teacher's query embeddings that
    embedding_mse reads instead of running the teacher (`data.teacher_embeddings` of train).

    Memory: N x D x 4 bytes (20,000 queries at 768 dims: 61 MB).
    """

    def __init__(self, path: str | Path):
        import torch

        self.path = str(path)
        manifest = read_embeddings_manifest(path)
        ids: list[str] = []
        mats = []
        for batch_ids, vectors in iter_embeddings(path):
            ids.extend(batch_ids)
            mats.append(vectors)
        matrix = np.concatenate(mats) if mats else np.zeros((0, manifest["dim"]), np.float32)
        self.row = {q: i for i, q in enumerate(ids)}
        self.matrix = torch.from_numpy(matrix)

    def get(self, qids: list[str]):
        """`[B, D]` float32 tensor of the rows of `qids`; an id missing from the table is an error."""
        missing = [q for q in qids if q not in self.row]
        if missing:
            raise InputError(
                self.path, None,
                f"no embedding for qid {missing[0]!r} ({len(missing)} of the batch's {len(qids)} missing): "
                "encode the same queries table that training reads",
            )
        return self.matrix[[self.row[q] for q in qids]]
