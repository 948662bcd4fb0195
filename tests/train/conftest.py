"""Training fixtures: a memorisable set of training groups and a dropout-free tiny student."""

from __future__ import annotations

import random

import pytest

from densekit.artifacts import TableWriter, write_manifest
from densekit.data.records import (
    CORPUS_SCHEMA,
    GROUPS_SCHEMA,
    QRELS_SCHEMA,
    QUERIES_SCHEMA,
    passage,
)

WORDS = [f"w{i}" for i in range(64)]


def make_task(root, num_queries=32, num_negatives=3, seed=0):
    """Queries that share two rare words with their positive: learnable in a few dozen steps.

    Writes groups/, corpus/, queries/, qrels/ tables under `root` and returns their paths.
    """
    rng = random.Random(seed)
    docs = {f"d{i}": " ".join(rng.sample(WORDS, 6)) for i in range(num_queries * 2)}
    pids = list(docs)
    groups = {"qid": [], "query": [], "positives": [], "negatives": []}
    queries = {"qid": [], "text": []}
    qrels = {"qid": [], "pid": [], "relevance": []}
    for i in range(num_queries):
        pid = pids[i]
        words = docs[pid].split()
        q = " ".join(rng.sample(words, 3))
        qid = f"q{i}"
        negs = rng.sample([p for p in pids if p != pid], num_negatives)
        groups["qid"].append(qid)
        groups["query"].append(q)
        groups["positives"].append([passage(pid, docs[pid])])
        groups["negatives"].append([passage(p, docs[p]) for p in negs])
        queries["qid"].append(qid)
        queries["text"].append(q)
        qrels["qid"].append(qid)
        qrels["pid"].append(pid)
        qrels["relevance"].append(1)
    out = {}
    for name, schema, data in (
        ("groups", GROUPS_SCHEMA, groups),
        ("queries", QUERIES_SCHEMA, queries),
        ("qrels", QRELS_SCHEMA, qrels),
        ("corpus", CORPUS_SCHEMA, {"pid": pids, "text": [docs[p] for p in pids], "title": [""] * len(pids)}),
    ):
        with TableWriter(root / name, schema) as w:
            w.write(data)
        write_manifest(root / name, "test")
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def train_task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("train-task"))


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory):
    """A tiny bi-encoder (mean pooling) with a tokenizer that knows every word of the task."""
    from densekit.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("student") / "bert", [" ".join(WORDS)] * 4, layers=2, hidden=32, seed=0
    )
