"""TableLookup (id -> row of an imported table) and HashRuns, against plain dicts and sets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, write_manifest
from densekit.data import lookup as lookup_mod
from densekit.data.lookup import HashRuns, TableLookup
from densekit.data.records import CORPUS_SCHEMA
from densekit.errors import InputError


def corpus(path, pids, rows_per_part=7):
    with TableWriter(path, CORPUS_SCHEMA, rows_per_part=rows_per_part) as w:
        w.write({"pid": pids, "text": [f"text of {p}" for p in pids], "title": [f"t{p}" for p in pids]})
    write_manifest(path, "test")
    return path


def test_find_and_take_match_a_dict(tmp_path):
    pids = [str(i * 7919 % 1000) for i in range(300)]
    c = corpus(tmp_path / "c", pids)
    with TableLookup.for_table(c, "pid") as lk:
        want = ["0", "999", "nope", pids[5], pids[299], ""]
        pos = lk.find(want)
        ref = {p: i for i, p in enumerate(pids)}
        assert pos.tolist() == [ref.get(w, -1) for w in want]
        assert lk.take(pos[pos >= 0], "text").to_pylist() == [f"text of {w}" for w in want if w in ref]
    # Nothing is written into the input table (issue #17): without a cache folder the lookup is
    # built in a temporary folder and removed on close.
    assert sorted(p.name for p in c.iterdir()) == ["_manifest.json", *(f"part-{i:05d}.parquet" for i in range(43))]


def test_collisions_resolved_exactly(tmp_path, monkeypatch):
    # Every id of the same length collides: the stored id decides.
    monkeypatch.setattr(lookup_mod, "hash_ids", lambda ids: np.array(
        [len(x) for x in (ids.to_pylist() if hasattr(ids, "to_pylist") else ids)], np.uint64))
    c = corpus(tmp_path / "c", ["aa", "bb", "cc", "d"])
    with TableLookup.build(c, tmp_path / "lk", "pid") as lk:
        assert lk.find(["cc", "aa", "zz", "d", "e"]).tolist() == [2, 0, -1, 3, -1]


def test_duplicate_ids_refused(tmp_path):
    c = corpus(tmp_path / "c", ["1", "2", "1"])
    with pytest.raises(InputError, match="'1' appears twice"):
        TableLookup.build(c, tmp_path / "lk", "pid")


def test_stale_lookup_is_rebuilt(tmp_path):
    c = corpus(tmp_path / "c", ["1", "2"])
    TableLookup.for_table(c, "pid", cache_dir=tmp_path / "cache").close()
    corpus(tmp_path / "c", ["3"])  # the table is rewritten (a new manifest)
    with TableLookup.for_table(c, "pid", cache_dir=tmp_path / "cache") as lk:
        assert lk.find(["1", "3"]).tolist() == [-1, 0]


def test_a_lookup_an_older_densekit_kept_in_the_table_is_still_read(tmp_path):
    c = corpus(tmp_path / "c", ["1", "2"])
    TableLookup.build(c, c / "lookup-pid", "pid").close()
    with TableLookup.for_table(c, "pid") as lk:
        assert lk.directory == c / "lookup-pid" and lk.find(["2"]).tolist() == [1]


def test_hash_runs_matches_a_set():
    rng = np.random.default_rng(0)
    runs, ref = HashRuns(), set()
    for _ in range(40):
        h = rng.integers(0, 500, size=int(rng.integers(1, 60))).astype(np.uint64)
        seen = runs.seen_then_add(h)
        expect = []
        for x in h.tolist():
            expect.append(x in ref)
            ref.add(x)
        assert seen.tolist() == expect
    assert len(runs) == len(ref) and len(runs.runs) <= 12


def test_take_on_multi_chunk_table(tmp_path):
    pids = [f"p{i}" for i in range(100)]
    c = corpus(tmp_path / "c", pids, rows_per_part=9)
    with TableLookup.for_table(c, "pid", columns=["text"]) as lk:
        assert lk.columns == ["pid", "text"]
        idx = np.array([99, 0, 50, 9, 8])
        assert lk.take(idx, "text").to_pylist() == [f"text of p{i}" for i in idx]
        assert isinstance(lk.take(idx, "pid"), pa.Array)


def test_shared_cache_keeps_same_named_tables_apart(tmp_path):
    a = corpus(tmp_path / "a" / "corpus", ["1", "2"])
    b = corpus(tmp_path / "b" / "corpus", ["3"])
    cache = tmp_path / "cache"
    with TableLookup.for_table(a, "pid", cache_dir=cache) as la, TableLookup.for_table(b, "pid", cache_dir=cache) as lb:
        assert la.find(["1", "3"]).tolist() == [0, -1] and lb.find(["1", "3"]).tolist() == [-1, 0]
    assert len(list(cache.iterdir())) == 2 and not (a / "lookup-pid").exists()
