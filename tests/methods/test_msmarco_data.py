"""The full-scale methods' data files run for real on tiny files laid out as the official MS MARCO
downloads: msmarco_data.yaml (passages) and msmarco_doc_data.yaml (documents: `D` ids, title and
body, space-separated qrels, the official BM25 top-100 run). What a full-scale method gets from them
(corpus, queries, qrels, BM25 groups) is checked against the files' contents."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from densekit.methods import run
from densekit_testdata import PASSAGES

ROOT = Path(__file__).resolve().parents[2]
N_DOCS, N_TRAIN, N_DEV = 8, 3, 2


def _write_passages(d: Path) -> tuple[str, dict[str, str]]:
    (d / "collection.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in enumerate(PASSAGES)))
    (d / "queries.train.tsv").write_text("".join(f"{100 + q}\ttrain query {q}\n" for q in range(N_TRAIN)))
    (d / "queries.dev.small.tsv").write_text("".join(f"{200 + q}\tdev query {q}\n" for q in range(N_DEV)))
    # Official passage qrels: tab-separated `qid 0 pid 1`.
    (d / "qrels.train.tsv").write_text("".join(f"{100 + q}\t0\t{q}\t1\n" for q in range(N_TRAIN)))
    (d / "qrels.dev.small.tsv").write_text("".join(f"{200 + q}\t0\t{q + 4}\t1\n" for q in range(N_DEV)))
    run_path = d / "bm25.train.trec"
    run_path.write_text("".join(f"{100 + q} Q0 {p} {r + 1} {10.0 - r} Anserini\n"
                                for q in range(N_TRAIN) for r, p in enumerate(range(N_DOCS))))
    return str(run_path), {str(q): str(100 + q) for q in range(N_TRAIN)}


def _write_documents(d: Path) -> tuple[str, dict[str, str]]:
    (d / "msmarco-docs.tsv").write_text(
        "".join(f"D{i}\thttp://example.org/{i}\ttitle {i}\t{t}\n" for i, t in enumerate(PASSAGES)))
    (d / "msmarco-doctrain-queries.tsv").write_text("".join(f"{100 + q}\ttrain query {q}\n" for q in range(N_TRAIN)))
    (d / "msmarco-docdev-queries.tsv").write_text("".join(f"{200 + q}\tdev query {q}\n" for q in range(N_DEV)))
    # Official document qrels: space-separated `qid 0 Ddocid 1`, despite the .tsv name.
    (d / "msmarco-doctrain-qrels.tsv").write_text("".join(f"{100 + q} 0 D{q} 1\n" for q in range(N_TRAIN)))
    (d / "msmarco-docdev-qrels.tsv").write_text("".join(f"{200 + q} 0 D{q + 4} 1\n" for q in range(N_DEV)))
    run_path = d / "msmarco-doctrain-top100"
    run_path.write_text("".join(f"{100 + q} Q0 D{p} {r + 1} {-5.0 - r:.3f} IndriQueryLikelihood\n"
                                for q in range(N_TRAIN) for r, p in enumerate(range(N_DOCS))))
    return str(run_path), {f"D{q}": str(100 + q) for q in range(N_TRAIN)}


def _table(path: Path) -> list[dict]:
    return [r for f in sorted(path.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.mark.ray
@pytest.mark.parametrize("name", ["msmarco_data", "msmarco_doc_data"])
def test_data_file_imports_the_official_layout(name, tmp_path, ray_session):
    data = tmp_path / "data"
    data.mkdir()
    bm25, positive_of = (_write_documents if name == "msmarco_doc_data" else _write_passages)(data)
    out = tmp_path / "run"
    assert run([str(ROOT / "configs" / "methods" / f"{name}.yaml"), f"output={out}",
                f"vars.msmarco={data}", f"vars.bm25_train_run={bm25}"]) == 0

    corpus = _table(out / "corpus")
    assert len(corpus) == N_DOCS
    assert [r["text"] for r in corpus] == PASSAGES  # the body; a document's URL is dropped
    if name == "msmarco_doc_data":
        assert [r["pid"] for r in corpus] == [f"D{i}" for i in range(N_DOCS)]
        assert [r["title"] for r in corpus] == [f"title {i}" for i in range(N_DOCS)]
        assert not any("http" in str(v) for r in corpus for v in r.values())
    assert len(_table(out / "queries_train")) == N_TRAIN and len(_table(out / "queries_dev")) == N_DEV
    assert len(_table(out / "qrels_train")) == N_TRAIN and len(_table(out / "qrels_dev")) == N_DEV

    groups = _table(out / "bm25_groups")
    assert sorted(g["qid"] for g in groups) == sorted(positive_of.values())
    for g in groups:
        pos = [p["pid"] for p in g["positives"]]
        negs = [p["pid"] for p in g["negatives"]]
        assert [positive_of[p] for p in pos] == [g["qid"]]
        # Every other document of the BM25 run, never the positive, texts filled from the corpus.
        assert sorted(negs) == sorted(c["pid"] for c in corpus if c["pid"] not in pos)
        assert all(p["text"] for p in g["negatives"])
