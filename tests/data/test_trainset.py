"""`densekit trainset`: dev queries held out of the training qrels, title and sentence pseudo-queries,
checked against the input tables row by row."""

from __future__ import annotations

import pytest

from densekit.artifacts import TableWriter, read_manifest, read_table, write_manifest
from densekit.config import TrainsetConfig, load_config
from densekit.data import records as R
from densekit.data.trainset import trainset
from densekit.errors import InputError


def _table(path, schema, rows):
    with TableWriter(path, schema) as w:
        w.write({c: [r[i] for r in rows] for i, c in enumerate(schema.names)})
    write_manifest(path, "test")
    return path


@pytest.fixture
def collection(tmp_path):
    docs = [(f"d{i}", f"Sentence one of doc {i} is here. Second sentence of doc {i} too! Short.", f"Title {i}")
            for i in range(6)]
    docs.append(("d6", "No title here at all, a single long sentence.", ""))
    queries = [(f"q{i}", f"query {i}") for i in range(5)]
    qrels = [("q0", "d0", 1), ("q1", "d1", 1), ("q1", "d2", 1), ("q2", "d3", 1), ("q3", "d4", 1), ("q4", "d5", 0)]
    return {
        "corpus": _table(tmp_path / "corpus", R.CORPUS_SCHEMA, docs),
        "queries": _table(tmp_path / "queries", R.QUERIES_SCHEMA, queries),
        "qrels": _table(tmp_path / "qrels", R.QRELS_SCHEMA, qrels),
    }


def _run(collection, out, *extra):
    trainset(load_config(TrainsetConfig, None, [
        f"corpus={collection['corpus']}", f"queries={collection['queries']}", f"qrels={collection['qrels']}",
        f"output={out}", *extra,
    ]))


def test_splits_and_pseudo_queries(collection, tmp_path):
    out = tmp_path / "ts"
    _run(collection, out, "dev_queries=2", "title_queries=true", "sentence_queries=100", "seed=3")
    dev = read_table(out / "qrels/dev").to_pylist()
    train = read_table(out / "qrels/train").to_pylist()
    dev_q = {r[R.QID] for r in dev}
    assert len(dev_q) == 2 and dev_q <= {"q0", "q1", "q2", "q3"}  # judged (relevance > 0) queries only
    # Every input judgement lands in exactly one split; the dev queries' all of them.
    original = [r for r in read_table(collection["qrels"]).to_pylist()]
    assert sorted(map(str, dev + [r for r in train if not r[R.QID].startswith("t-")])) == sorted(map(str, original))
    # Title queries judge their own document; a document without a title gives none.
    titles = {r[R.QID]: r[R.PID] for r in train if r[R.QID].startswith("t-")}
    assert titles == {f"t-d{i}": f"d{i}" for i in range(6)}
    texts = {r[R.QID]: r[R.TEXT] for r in read_table(out / "queries").to_pylist()}
    assert texts["t-d4"] == "Title 4"
    training = {r[R.QID] for r in read_table(out / "train_queries").to_pylist()}
    assert not training & dev_q, "a dev query is among the training queries"
    # Sentences of >= 4 words, unjudged, de-duplicated: 2 per titled doc + the untitled one.
    sentences = {q for q in training if q.startswith("s-")}
    assert len(sentences) == 13 and texts["s-d6-0"] == "No title here at all, a single long sentence."
    assert "Short." not in texts.values()
    assert not any(r[R.QID] in sentences for r in train)
    assert set(texts) == training | dev_q
    labelled = {r[R.QID] for r in read_table(out / "labelled_queries").to_pylist()}
    assert labelled == ({r[R.QID] for r in train if r[R.RELEVANCE] > 0} | dev_q) and not labelled & sentences
    assert read_manifest(out)["counts"]["title_queries"] == 6


def test_seeded_and_capped(collection, tmp_path):
    _run(collection, tmp_path / "a", "dev_queries=1", "sentence_queries=5", "seed=7")
    _run(collection, tmp_path / "b", "dev_queries=1", "sentence_queries=5", "seed=7")
    a, b = (read_table(tmp_path / x / "train_queries").to_pylist() for x in "ab")
    assert a == b
    assert sum(r[R.QID].startswith("s-") for r in a) == 5


def test_refuses_a_dev_split_that_leaves_no_training_query(collection, tmp_path):
    with pytest.raises(InputError, match="judge only 4 queries"):
        _run(collection, tmp_path / "x", "dev_queries=4")
    assert not (tmp_path / "x").exists()
