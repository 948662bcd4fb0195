"""Every text format round-trips: import, then export where an export exists (byte-equal on
canonical samples, value-equal otherwise), on small samples shaped like the real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densekit.artifacts import read_manifest, read_table
from densekit.config import ExportConfig, ImportConfig
from densekit.data import io
from densekit.data.exporter import export_data
from densekit.data.importer import import_data


def run_import(tmp: Path, fmt: str, path: Path, name: str, **kw) -> Path:
    cfg = ImportConfig(format=fmt, path=str(path), output=str(tmp / name), **kw)
    cfg.validate()
    import_data(cfg)
    read_manifest(tmp / name)
    return tmp / name


def run_export(tmp: Path, fmt: str, table: Path, name: str, **kw) -> Path:
    cfg = ExportConfig(format=fmt, input=str(table), output=str(tmp / name), **kw)
    cfg.validate()
    export_data(cfg)
    return tmp / name


def rows(table: Path) -> list[dict]:
    return read_table(table).to_pylist()


COLLECTION = "0\tThe presence of communication amid scientific minds was equally important.\n" \
             "1\tThe Manhattan Project and its atomic bomb helped bring an end to World War II.\n" \
             "7\tÉcole normale supérieure — Paris; 東京\n"
QUERIES = "1048585\twhat is paula deen's brother\n2\tAndrogen receptor define\n"


@pytest.fixture
def corpus_and_queries(tmp_path):
    (tmp_path / "collection.tsv").write_text(COLLECTION, encoding="utf-8")
    (tmp_path / "queries.tsv").write_text(QUERIES, encoding="utf-8")
    corpus = run_import(tmp_path, "msmarco_collection", tmp_path / "collection.tsv", "corpus")
    queries = run_import(tmp_path, "msmarco_collection", tmp_path / "queries.tsv", "queries", kind="queries")
    return corpus, queries


def test_msmarco_collection_and_queries_round_trip_bytes(tmp_path, corpus_and_queries):
    corpus, queries = corpus_and_queries
    assert rows(corpus)[2] == {"pid": "7", "text": "École normale supérieure — Paris; 東京", "title": ""}
    assert rows(queries)[0] == {"qid": "1048585", "text": "what is paula deen's brother"}
    assert run_export(tmp_path, "msmarco_collection", corpus, "c.tsv").read_text(encoding="utf-8") == COLLECTION
    assert run_export(tmp_path, "msmarco_collection", queries, "q.tsv").read_text(encoding="utf-8") == QUERIES


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    raw = b"\xef\xbb\xbf" + COLLECTION.replace("\n", "\r\n").encode() + b"\r\n"
    (tmp_path / "c.tsv").write_bytes(raw)
    t = run_import(tmp_path, "msmarco_collection", tmp_path / "c.tsv", "corpus")
    assert [r["pid"] for r in rows(t)] == ["0", "1", "7"]  # the BOM is not glued to the first id
    assert rows(t)[0]["text"].endswith("important.")  # no trailing \r


def test_msmarco_docs_values(tmp_path):
    docs = ("D1555982\thttps://answers.yahoo.com/question/index?qid=1\tThe hot glowing surfaces of stars emit energy\t"
            "Science & Mathematics Physics The hot glowing surfaces of stars emit energy in the form of ...\n"
            "D301595\thttp://childparenting.about.com/\tWhat are the benefits of tracking?\t\n")
    (tmp_path / "docs.tsv").write_text(docs)
    t = run_import(tmp_path, "msmarco_docs", tmp_path / "docs.tsv", "docs")
    assert rows(t) == [
        {"pid": "D1555982", "title": "The hot glowing surfaces of stars emit energy",
         "text": "Science & Mathematics Physics The hot glowing surfaces of stars emit energy in the form of ..."},
        {"pid": "D301595", "title": "What are the benefits of tracking?", "text": ""},
    ]
    # Exported as an MS MARCO collection (id<TAB>text): the body is the text.
    out = run_export(tmp_path, "msmarco_collection", t, "docs-collection.tsv").read_text()
    assert out.splitlines()[1] == "D301595\t"


@pytest.mark.parametrize("header", [True, False], ids=["dpr-with-header", "lead-without-header"])
def test_dpr_tsv(tmp_path, header):
    body = '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n2\tGod at Sinai granted Aaron the priesthood\tAaron\n'
    (tmp_path / "psgs_w100.tsv").write_text(("id\ttext\ttitle\n" if header else "") + body)
    t = run_import(tmp_path, "dpr_tsv", tmp_path / "psgs_w100.tsv", "psgs")
    assert rows(t) == [
        {"pid": "1", "text": '"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"', "title": "Aaron"},
        {"pid": "2", "text": "God at Sinai granted Aaron the priesthood", "title": "Aaron"},
    ]


def write_beir(root: Path) -> None:
    (root / "qrels").mkdir(parents=True)
    corpus = [{"_id": "4983", "title": "Microstructural development", "text": "Alterations of the architecture \u00e9.", "metadata": {}},
              {"_id": "5836", "title": "", "text": "Myelodysplastic syndromes (MDS) are age-dependent.", "metadata": {}}]
    queries = [{"_id": "1", "text": "0-dimensional biomaterials show inductive properties.", "metadata": {}},
               {"_id": "3", "text": "1,000 genomes project enables mapping.", "metadata": {}}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t4983\t1\n3\t5836\t2\n")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n3\t4983\t1\n")


def test_beir_folder_round_trip_bytes(tmp_path):
    write_beir(tmp_path / "src")
    t = run_import(tmp_path, "beir", tmp_path / "src", "beir")
    top = read_manifest(t)
    assert top["tables"] == {"corpus": 2, "queries": 2, "qrels/test": 2, "qrels/train": 1}
    for sub in ("corpus", "queries", "qrels/test", "qrels/train"):
        read_manifest(t / sub)
    assert rows(t / "qrels" / "test")[1] == {"qid": "3", "pid": "5836", "relevance": 2}
    out = run_export(tmp_path, "beir", t, "beir-out")
    for f in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv"):
        assert (out / f).read_bytes() == (tmp_path / "src" / f).read_bytes(), f


def test_beir_single_files(tmp_path):
    write_beir(tmp_path / "src")
    c = run_import(tmp_path, "beir_corpus", tmp_path / "src" / "corpus.jsonl", "c")
    q = run_import(tmp_path, "beir_queries", tmp_path / "src" / "queries.jsonl", "q")
    r = run_import(tmp_path, "beir_qrels", tmp_path / "src" / "qrels" / "test.tsv", "r", corpus=str(c), queries=str(q))
    assert rows(c)[0]["title"] == "Microstructural development"
    assert [x["qid"] for x in rows(r)] == ["1", "3"]


def test_trec_qrels_round_trip_bytes(tmp_path):
    text = "1 0 D59221 1\n1 0 D59222 0\n19335 0 1017759 3\n19335 0 1082489 -1\n"
    (tmp_path / "q.txt").write_text(text)
    t = run_import(tmp_path, "trec_qrels", tmp_path / "q.txt", "qrels")
    assert rows(t)[3] == {"qid": "19335", "pid": "1082489", "relevance": -1}
    assert run_export(tmp_path, "trec_qrels", t, "out.qrels").read_text() == text


def test_trec_qrels_tab_separated_value_equal(tmp_path):
    (tmp_path / "q.tsv").write_text("1102432\t0\t2026790\t1\n")  # MS MARCO qrels.dev.tsv layout
    t = run_import(tmp_path, "trec_qrels", tmp_path / "q.tsv", "qrels")
    assert run_export(tmp_path, "trec_qrels", t, "out.qrels").read_text() == "1102432 0 2026790 1\n"


def test_trec_run_round_trip_bytes(tmp_path):
    text = "1 Q0 D3 1 12.5 bm25\n1 Q0 D1 2 3.25 bm25\n2 Q0 D2 1 -1.75 bm25\n2 Q0 D7 2 -2 bm25\n"
    (tmp_path / "run.txt").write_text(text)
    t = run_import(tmp_path, "trec_run", tmp_path / "run.txt", "run")
    assert rows(t)[0] == {"qid": "1", "pid": "D3", "rank": 1, "score": 12.5}
    assert run_export(tmp_path, "trec_run", t, "out.run", tag="bm25").read_text() == text


def test_margin_mse_round_trip_bytes(tmp_path, corpus_and_queries):
    corpus, queries = corpus_and_queries
    text = "8.5\t-1.25\t1048585\t0\t1\n6.75\t0.5\t2\t7\t0\n"
    (tmp_path / "t.tsv").write_text(text)
    g = run_import(tmp_path, "margin_mse_tsv", tmp_path / "t.tsv", "groups", corpus=str(corpus), queries=str(queries))
    first = rows(g)[0]
    assert first["query"] == "what is paula deen's brother"
    assert first["positives"] == [{"pid": "0", "text": COLLECTION.split("\n")[0][2:], "title": "", "score": 8.5}]
    assert first["negatives"][0]["pid"] == "1" and first["negatives"][0]["score"] == -1.25
    assert run_export(tmp_path, "margin_mse_tsv", g, "out.tsv").read_text() == text


def test_margin_mse_export_one_row_per_pair(tmp_path, corpus_and_queries):
    """A group with 2 positives and 2 negatives gives 4 teacher rows (DPR json -> scored by hand)."""
    import pyarrow as pa

    from densekit.artifacts import TableWriter, write_manifest
    from densekit.data.records import GROUPS_SCHEMA, passage

    table = tmp_path / "scored"
    with TableWriter(table, GROUPS_SCHEMA) as w:
        w.write(pa.Table.from_pylist([{
            "qid": "q1", "query": "x",
            "positives": [passage("a", "ta", score=2.0), passage("b", "tb", score=1.5)],
            "negatives": [passage("c", "tc", score=0.25), passage("d", "td", score=-3.0)],
        }], schema=GROUPS_SCHEMA))
    write_manifest(table, "test")
    out = run_export(tmp_path, "margin_mse_tsv", table, "pairs.tsv").read_text().splitlines()
    assert out == ["2\t0.25\tq1\ta\tc", "2\t-3\tq1\ta\td", "1.5\t0.25\tq1\tb\tc", "1.5\t-3\tq1\tb\td"]


LEAD_JSON = [
    {"question": "what is paula deen's brother", "answers": ["0"], "positive_ctxs": ["0"],
     "hard_negative_ctxs": ["1", "6"], "negative_ctxs": []},
    {"question": "Androgen receptor define", "answers": [6], "positive_ctxs": [6], "hard_negative_ctxs": [0],
     "negative_ctxs": []},
]


@pytest.mark.parametrize("indent", [4, None], ids=["pretty", "one-line"])
def test_lead_biencoder_json_with_pid_offset(tmp_path, indent):
    """LEAD's json holds 0-based ids while its psgs_w100.tsv is 1-based: pid_offset=1."""
    (tmp_path / "psgs.tsv").write_text("1\tpassage one\tT1\n2\tpassage two\tT2\n7\tpassage seven\tT7\n")
    corpus = run_import(tmp_path, "dpr_tsv", tmp_path / "psgs.tsv", "corpus")
    (tmp_path / "b.json").write_text(json.dumps(LEAD_JSON, indent=indent))
    g = run_import(tmp_path, "dpr_json", tmp_path / "b.json", "groups", corpus=str(corpus), pid_offset=1)
    got = rows(g)
    assert [r["qid"] for r in got] == ["0", "1"]  # no qid field: the record's position
    assert got[0]["query"] == "what is paula deen's brother"
    assert got[0]["positives"] == [{"pid": "1", "text": "passage one", "title": "T1", "score": None}]
    assert [n["pid"] for n in got[0]["negatives"]] == ["2", "7"]
    assert [n["text"] for n in got[1]["negatives"]] == ["passage one"]


def test_dpr_json_with_context_dicts_needs_no_corpus(tmp_path):
    recs = [{"dataset": "nq", "question": "big little lies season 2 how many episodes", "answers": ["seven"],
             "positive_ctxs": [{"title": "Big Little Lies", "text": "has seven episodes", "score": 1000,
                                "title_score": 1, "passage_id": "18768923"}],
             "negative_ctxs": [{"title": "Cormac", "text": "the show", "score": 0, "passage_id": "14526"}],
             "hard_negative_ctxs": [{"title": "Little Lies", "text": "Fleetwood Mac", "passage_id": "3"}]}]
    (tmp_path / "nq.json").write_text(json.dumps(recs, indent=2))
    g = rows(run_import(tmp_path, "dpr_json", tmp_path / "nq.json", "groups"))
    assert g[0]["positives"] == [{"pid": "18768923", "text": "has seven episodes", "title": "Big Little Lies", "score": None}]
    assert [n["pid"] for n in g[0]["negatives"]] == ["3", "14526"]  # hard negatives first


def test_prod_json(tmp_path, corpus_and_queries):
    corpus, queries = corpus_and_queries
    recs = [{"query_id": "1048585", "pos_id": ["0"], "query_string": "paula deen brother", "neg_id": ["1", "7"]},
            {"query_id": 2, "pos_id": ["7"], "neg_id": []}]
    (tmp_path / "prod.json").write_text(json.dumps(recs))
    g = rows(run_import(tmp_path, "prod_json", tmp_path / "prod.json", "g", corpus=str(corpus), queries=str(queries)))
    assert g[0]["query"] == "paula deen brother"  # the file's own query string wins
    assert g[1]["query"] == "Androgen receptor define"  # filled from the queries table
    assert [p["text"] for p in g[0]["negatives"]] == [COLLECTION.split("\n")[1][2:], "École normale supérieure — Paris; 東京"]
    assert g[1]["negatives"] == []


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
def test_json_stream_matches_json_load_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr("densekit.data.formats.jsonstream.JSON_CHUNK", chunk)  # the chunk the reader uses
    recs = [{"question": f"q {i} \u00e9\u6771", "positive_ctxs": [i, i + 1], "s": "x\\\"" * (i % 7),
             "nested": {"a": [1.5, None, True]}} for i in range(60)]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(recs, indent=2, ensure_ascii=False), encoding="utf-8")
    got = list(io.iter_json_records(p, "objects"))
    assert [o for _, _, o in got] == recs
    lines = p.read_text(encoding="utf-8").split("\n")
    for _, line, _obj in got[:5]:
        assert lines[line - 1].strip() == "{"  # the line where the record starts
    # JSON lines work too.
    p.write_text("\n".join(json.dumps(r) for r in recs))
    assert [o for _, _, o in io.iter_json_records(p, "objects")] == recs
