"""GlobalBatchStream: deterministic global batches, exact resume, rank slices that tile the batch."""

from __future__ import annotations

import itertools

import pytest

from densekit.artifacts import TableWriter, write_manifest
from densekit.data.loader import GlobalBatchStream, StreamPosition
from densekit.data.records import QUERIES_SCHEMA
from densekit.errors import ConfigError


@pytest.fixture
def table(tmp_path):
    out = tmp_path / "t"
    with TableWriter(out, QUERIES_SCHEMA, rows_per_part=23) as w:
        w.write({"qid": [str(i) for i in range(100)], "text": [f"q{i}" for i in range(100)]})
    write_manifest(out, "test")
    return out


def take(stream, start, n):
    return [(pos, t.column("qid").to_pylist()) for pos, t in itertools.islice(stream(start), n)]


def test_epochs_cover_every_row_once_and_reshuffle(table):
    s = GlobalBatchStream(table, global_batch_size=10, seed=1, shuffle_window=40)
    batches = take(s, StreamPosition(), 20)
    epoch0 = [q for pos, b in batches[:10] for q in b]
    epoch1 = [q for pos, b in batches[10:] for q in b]
    assert sorted(epoch0, key=int) == [str(i) for i in range(100)]
    assert sorted(epoch1, key=int) == [str(i) for i in range(100)]
    assert epoch0 != epoch1
    assert [p.epoch for p, _ in batches] == [0] * 10 + [1] * 10
    assert batches[9][0] == StreamPosition(0, 10) and batches[10][0] == StreamPosition(1, 1)
    # Same seed, same order; another seed, another order.
    assert take(GlobalBatchStream(table, 10, seed=1, shuffle_window=40), StreamPosition(), 20) == batches
    assert take(GlobalBatchStream(table, 10, seed=2, shuffle_window=40), StreamPosition(), 20) != batches


def test_resume_continues_exactly(table):
    s = GlobalBatchStream(table, global_batch_size=8, seed=3, shuffle_window=30)
    full = take(s, StreamPosition(), 30)  # crosses an epoch boundary (12 steps per epoch)
    for k in (1, 5, 12, 17):
        pos = full[k - 1][0]
        assert take(s, pos, 30 - k) == full[k:], f"resume after step {k}"


def test_rank_slices_tile_the_global_batch(table):
    one = take(GlobalBatchStream(table, 12, seed=0, shuffle_window=50), StreamPosition(), 16)
    ranks = [
        take(GlobalBatchStream(table, 12, rank=r, world_size=3, seed=0, shuffle_window=50), StreamPosition(), 16)
        for r in range(3)
    ]
    for i, (pos, rows) in enumerate(one):
        assert [q for r in range(3) for q in ranks[r][i][1]] == rows
        assert all(ranks[r][i][0] == pos for r in range(3))


def test_bad_sizes(table):
    with pytest.raises(ConfigError, match="does not divide by 3 workers"):
        GlobalBatchStream(table, 10, rank=0, world_size=3)
    with pytest.raises(ConfigError, match="fewer rows than one global batch"):
        next(GlobalBatchStream(table, 1000)(StreamPosition()))


@pytest.mark.ray
def test_ray_data_source_gives_the_same_batches(table, ray_session):
    a = take(GlobalBatchStream(table, 10, seed=4, shuffle_window=40), StreamPosition(), 12)
    b = take(GlobalBatchStream(table, 10, seed=4, shuffle_window=40, source="ray_data"), StreamPosition(), 12)
    assert a == b
