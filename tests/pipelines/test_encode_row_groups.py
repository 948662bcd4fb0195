"""encode on inputs whose Parquet parts hold several row groups (the importer writes row groups of
at most batch_bytes of text: a 20,000-document MS-DOC-shaped corpus is one part of two row groups).
Every slice of the plan names the global rows it really holds, and the pipeline writes every pid
once, in input order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from densekit.artifacts import TableWriter, read_manifest, read_table, write_manifest
from densekit.config import EncodeConfig, load_config
from densekit.data import records as R
from densekit.pipelines.encode import _chunks, _plan, encode


def _corpus(directory, n: int, rows_per_part: int, row_group_size: int):
    """A corpus table written in batches of row_group_size rows: one row group each."""
    pids = [f"p{i}" for i in range(n)]
    texts = [f"dense retrieval passage {i % 13} of the corpus" for i in range(n)]
    table = pa.table({R.PID: pids, R.TEXT: texts, R.TITLE: [""] * n}, schema=R.CORPUS_SCHEMA)
    with TableWriter(
        directory, R.CORPUS_SCHEMA, rows_per_part=rows_per_part, row_group_size=row_group_size
    ) as w:
        for start in range(0, n, row_group_size):
            w.write(table.slice(start, row_group_size))
    write_manifest(directory, "test")
    return directory, pids


def test_plan_of_parts_with_several_row_groups(tmp_path):
    path, pids = _corpus(tmp_path / "c", 1000, rows_per_part=400, row_group_size=100)
    groups = [
        pq.ParquetFile(p).metadata.num_row_groups for p in sorted(path.glob("part-*.parquet"))
    ]
    assert groups == [4, 4, 2]
    files, slices, total = _plan(path, rows_per_shard=128)
    assert total == 1000
    for chunked in (slices, [c for s in slices for c in _chunks(s, 50)]):
        seen = []
        for s in chunked:
            got = pq.ParquetFile(s.path).read_row_group(s.row_group, columns=[R.PID])
            got = got.column(R.PID).to_pylist()[s.start : s.stop]
            # The slice's global rows are the rows it holds.
            assert got == pids[s.first : s.first + len(got)]
            assert s.first // 128 == (s.first + len(got) - 1) // 128 == s.shard
            seen += got
        assert sorted(seen) == sorted(pids)  # every row exactly once


@pytest.mark.ray
def test_encode_writes_every_pid_once_in_order(tmp_path, ray_session, tiny_model_dir):
    path, pids = _corpus(tmp_path / "c", 600, rows_per_part=300, row_group_size=100)
    assert pq.ParquetFile(path / "part-00000.parquet").metadata.num_row_groups == 3
    out = tmp_path / "emb"
    encode(load_config(EncodeConfig, overrides=[
        f"model={tiny_model_dir}", f"input={path}", f"output={out}", "rows_per_shard=200",
        "block_rows=64", "batch_size=32"]))  # fmt: skip
    assert read_manifest(out)["count"] == 600
    got = read_table(out, [R.ID]).column(R.ID).to_pylist()
    assert got == pids
    assert [pq.ParquetFile(p).metadata.num_rows for p in sorted(out.glob("part-*.parquet"))] == [
        200
    ] * 3
    emb = np.array(read_table(out, [R.EMBEDDING]).column(R.EMBEDDING).to_pylist())
    assert emb.shape[0] == 600 and np.isfinite(emb).all()
