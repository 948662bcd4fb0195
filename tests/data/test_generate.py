"""`densekit generate`: the generated task is deterministic, honours its sizes, is consistent, and
needs a trained model (exact word overlap finds little; scripts/check_generated_task.py shows
that trained encoders do well)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from densekit.artifacts import read_manifest, read_table
from densekit.cli import main
from densekit.config import GenerateConfig
from densekit.data.synthetic import build_task, generate
from densekit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(num_docs=400, num_train_queries=600, num_dev_queries=80, num_topics=8, num_concepts=400)


def small(tmp: Path, name: str = "task", **kw) -> Path:
    cfg = GenerateConfig(output=str(tmp / name), **{**SMALL, **kw})
    generate(cfg)
    return tmp / name


def tables(task: Path) -> dict:
    return {n: read_table(task / n).to_pylist() for n in ("corpus", "queries", "qrels/train", "qrels/dev")}


def test_deterministic_for_a_seed(tmp_path):
    a, b = tables(small(tmp_path, "a")), tables(small(tmp_path, "b"))
    assert a == b
    c = tables(small(tmp_path, "c", seed=1))
    assert c["corpus"] != a["corpus"] and c["queries"] != a["queries"]


def test_sizes_and_manifests(tmp_path):
    task = small(tmp_path, num_docs=123, num_train_queries=45, num_dev_queries=6, doc_length=17, query_length=7)
    t = tables(task)
    assert len(t["corpus"]) == 123 and len(t["queries"]) == 51
    assert len(t["qrels/train"]) == 45 and len(t["qrels/dev"]) == 6
    assert {len(r["text"].split()) for r in t["corpus"]} == {17}
    assert {len(r["text"].split()) for r in t["queries"]} == {7}
    top = read_manifest(task)
    assert top["tables"] == {"corpus": 123, "queries": 51, "qrels/train": 45, "qrels/dev": 6}
    for n in ("corpus", "queries", "qrels/train", "qrels/dev"):
        assert read_manifest(task / n)["rows"] == len(t[n])


def test_ids_consistent_and_splits_disjoint(tmp_path):
    t = tables(small(tmp_path))
    pids = [r["pid"] for r in t["corpus"]]
    qids = [r["qid"] for r in t["queries"]]
    assert len(set(pids)) == len(pids) and len(set(qids)) == len(qids)
    train = {r["qid"] for r in t["qrels/train"]}
    dev = {r["qid"] for r in t["qrels/dev"]}
    assert not train & dev and train | dev == set(qids)
    assert all(r["pid"] in set(pids) for r in t["qrels/train"] + t["qrels/dev"])
    text = {r["qid"]: r["text"] for r in t["queries"]}
    assert not {text[q] for q in train} & {text[q] for q in dev}


def bm25_mrr10(corpus, queries, qrels, k1=0.9, b=0.4) -> float:
    """MRR@10 of BM25 (plain numpy, exact word overlap only)."""
    docs = [(r["title"] + " " + r["text"]).split() for r in corpus]
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    tf = np.zeros((len(docs), len(vocab)))
    for i, d in enumerate(docs):
        for w, c in Counter(d).items():
            tf[i, vocab[w]] = c
    df = (tf > 0).sum(0)
    idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
    lens = tf.sum(1, keepdims=True)
    w = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lens / lens.mean()))
    rr = []
    for q, pid in qrels:
        cols = [vocab[x] for x in queries[q].split() if x in vocab]
        scores = w[:, cols].sum(1)
        rank = 1 + int((scores > scores[[r["pid"] for r in corpus].index(pid)]).sum())
        rr.append(1 / rank if rank <= 10 else 0.0)
    return float(np.mean(rr))


def test_not_solvable_by_word_overlap_nor_random(tmp_path):
    t = tables(small(tmp_path))
    queries = {r["qid"]: r["text"] for r in t["queries"]}
    dev = [(r["qid"], r["pid"]) for r in t["qrels/dev"]]
    mrr = bm25_mrr10(t["corpus"], queries, dev)
    chance = sum(1 / r for r in range(1, 11)) / len(t["corpus"])  # MRR@10 of a random ranking
    assert 2 * chance < mrr < 0.35, mrr  # topic words help BM25 a little, synonyms defeat it
    # Most concept words of a query never occur in its relevant document ...
    docs = {r["pid"]: set(r["text"].split()) | set(r["title"].split()) for r in t["corpus"]}
    shared = [len(set(queries[q].split()) & docs[p]) / len(queries[q].split()) for q, p in dev]
    assert np.mean(shared) < 0.5
    # ... but the synonyms of dev queries were seen in training queries (the map is learnable).
    train_words = {w for r in t["qrels/train"] for w in queries[r["qid"]].split()}
    corpus_words = {w for d in docs.values() for w in d}
    synonyms = [w for q, _ in dev for w in queries[q].split() if w not in corpus_words]
    assert synonyms and np.mean([w in train_words for w in synonyms]) > 0.9


def test_same_topic_documents_share_vocabulary(tmp_path):
    """Hard negatives exist: a dev query's relevant document shares words with many others."""
    task = build_task(GenerateConfig(output="unused", **SMALL))
    words = [set(t.split()) for t in task.doc_texts]
    overlaps = [len(words[0] & w) for w in words[1:]]
    per_topic = SMALL["num_docs"] / SMALL["num_topics"]
    assert sum(o >= 5 for o in overlaps) >= per_topic / 2


def test_cli_and_rerun_is_a_no_op(tmp_path, caplog):
    out = tmp_path / "task"
    args = ["generate", str(ROOT / "configs/generate/tiny.yaml"), f"output={out}", "num_docs=200",
            "num_train_queries=50", "num_dev_queries=10", "num_concepts=400"]
    assert main(args) == 0
    before = (out / "_manifest.json").read_text()
    assert main(args) == 0 and "nothing to do" in caplog.text
    assert (out / "_manifest.json").read_text() == before


@pytest.mark.parametrize("bad", [{"num_docs": 0}, {"query_length": 3}, {"synonym_rate": 1.5},
                                 {"num_concepts": 4, "num_topics": 8}])
def test_bad_sizes(tmp_path, bad):
    with pytest.raises(ConfigError):
        generate(GenerateConfig(output=str(tmp_path / "t"), **{**SMALL, **bad}))
    assert not (tmp_path / "t").exists()


def test_default_config_writes_the_documented_sizes(tmp_path):
    generate(GenerateConfig(output=str(tmp_path / "t")))
    d = GenerateConfig(output="x")
    assert read_manifest(tmp_path / "t")["tables"] == {
        "corpus": d.num_docs, "queries": d.num_train_queries + d.num_dev_queries,
        "qrels/train": d.num_train_queries, "qrels/dev": d.num_dev_queries,
    }


def jaccard(a: str, b: str) -> float:
    x, y = set(a.split()), set(b.split())
    return len(x & y) / len(x | y)


def test_doc_variants_are_all_relevant_and_train_labels_can_be_sparse():
    """doc_variants=3: each subject is written three times; dev queries judge all three, train
    queries with train_judged=1 only one, always the same one (the others are never judged)."""
    kw = {**SMALL, "num_docs": 390, "doc_variants": 3}
    full = build_task(GenerateConfig(output="unused", **kw))
    sparse = build_task(GenerateConfig(output="unused", **kw, train_judged=1))
    per_query = lambda pairs: Counter(Counter(q for q, _ in pairs).values())  # noqa: E731
    assert per_query(full.qrels["train"]) == {3: SMALL["num_train_queries"]}
    assert per_query(full.qrels["dev"]) == per_query(sparse.qrels["dev"]) == {3: SMALL["num_dev_queries"]}
    assert per_query(sparse.qrels["train"]) == {1: SMALL["num_train_queries"]}
    # train_judged draws nothing: documents, queries and dev judgments are the same.
    assert full.doc_texts == sparse.doc_texts and full.query_texts == sparse.query_texts
    assert full.qrels["dev"] == sparse.qrels["dev"]
    # The judged one is each train query's relevant document in the full labels, and one per subject.
    full_train = set(full.qrels["train"])
    assert all(pair in full_train for pair in sparse.qrels["train"])
    judged = {p for _, p in sparse.qrels["train"]}
    all_relevant = {p for _, p in full.qrels["train"]}
    assert len(all_relevant) >= 2.5 * len(judged)  # ~3 variants per subject met in training
    # The variants of a subject share its concept words: far more alike than other documents.
    text = dict(zip(full.doc_ids, full.doc_texts))
    groups = {}
    for q, p in full.qrels["dev"]:
        groups.setdefault(q, []).append(p)
    rng = np.random.default_rng(0)
    same = [jaccard(text[g[0]], text[g[1]]) for g in groups.values()]
    other = [jaccard(text[a], text[b]) for a, b in rng.choice(full.doc_ids, size=(200, 2))]
    assert np.mean(same) > 2 * np.mean(other), (np.mean(same), np.mean(other))
    # Variants get unrelated ids, not three neighbours.
    index = {p: i for i, p in enumerate(full.doc_ids)}
    assert np.mean([max(index[p] for p in g) - min(index[p] for p in g) == 2 for g in groups.values()]) < 0.1


def test_doc_variants_must_divide_num_docs(tmp_path):
    with pytest.raises(ConfigError, match="multiple of doc_variants=3"):
        generate(GenerateConfig(output=str(tmp_path / "t"), **{**SMALL, "doc_variants": 3}))
    assert not (tmp_path / "t").exists()
