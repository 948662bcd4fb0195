"""`densekit export`: tables to TREC / MS MARCO / BEIR / Margin-MSE text, atomically, refusing
inputs that are incomplete or of the wrong kind."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, write_manifest
from densekit.cli import main
from densekit.config import ExportConfig
from densekit.data.exporter import export_data
from densekit.data.records import CORPUS_SCHEMA, GROUPS_SCHEMA, QRELS_SCHEMA, RUN_SCHEMA, passage
from densekit.errors import ConfigError, IncompleteOutputError, InputError

ROOT = Path(__file__).resolve().parents[2]


def table(path, schema, rows, manifest=True):
    with TableWriter(path, schema, rows_per_part=2) as w:
        w.write(pa.Table.from_pylist(rows, schema=schema))
    if manifest:
        write_manifest(path, "test")
    return path


def export(tmp_path, fmt, src, name="out", **kw):
    cfg = ExportConfig(format=fmt, input=str(src), output=str(tmp_path / name), **kw)
    cfg.validate()
    export_data(cfg)
    return tmp_path / name


def test_trec_run_from_a_multi_part_table(tmp_path):
    rows = [{"qid": "q1", "pid": f"d{i}", "rank": i + 1, "score": 10.0 - i / 4} for i in range(5)]
    out = export(tmp_path, "trec_run", table(tmp_path / "run", RUN_SCHEMA, rows), tag="dense")
    assert out.read_text().splitlines() == [
        "q1 Q0 d0 1 10 dense", "q1 Q0 d1 2 9.75 dense", "q1 Q0 d2 3 9.5 dense", "q1 Q0 d3 4 9.25 dense",
        "q1 Q0 d4 5 9 dense",
    ]


def test_trec_qrels_and_beir_qrels_agree_with_pytrec_eval(tmp_path):
    """The exported qrels file, parsed the way trec_eval does, gives the table back."""
    import pytrec_eval

    rows = [{"qid": "1", "pid": "a", "relevance": 2}, {"qid": "1", "pid": "b", "relevance": 0},
            {"qid": "2", "pid": "a", "relevance": 1}]
    out = export(tmp_path, "trec_qrels", table(tmp_path / "qrels", QRELS_SCHEMA, rows))
    parsed = pytrec_eval.parse_qrel(open(out))
    assert parsed == {"1": {"a": 2, "b": 0}, "2": {"a": 1}}


def test_msmarco_collection_replaces_tabs_and_newlines(tmp_path, caplog):
    rows = [{"pid": "1", "text": "line one\nline\ttwo", "title": ""}, {"pid": "2", "text": "plain", "title": "t"}]
    out = export(tmp_path, "msmarco_collection", table(tmp_path / "c", CORPUS_SCHEMA, rows))
    assert out.read_text() == "1\tline one line two\n2\tplain\n"
    assert "1 texts held tabs or line breaks" in caplog.text


def test_beir_export_of_json_special_characters(tmp_path):
    root = tmp_path / "beir"
    table(root / "corpus", CORPUS_SCHEMA, [{"pid": "d1", "text": 'quote " and \\ and\nnewline', "title": "é"}])
    table(root / "queries", pa.schema([("qid", pa.string()), ("text", pa.string())]), [{"qid": "q", "text": "x"}])
    table(root / "qrels" / "dev", QRELS_SCHEMA, [{"qid": "q", "pid": "d1", "relevance": 1}])
    out = export(tmp_path, "beir", root)
    doc = json.loads((out / "corpus.jsonl").read_text())
    assert doc == {"_id": "d1", "title": "é", "text": 'quote " and \\ and\nnewline', "metadata": {}}
    assert (out / "qrels" / "dev.tsv").read_text() == "query-id\tcorpus-id\tscore\nq\td1\t1\n"


def test_margin_mse_needs_teacher_scores(tmp_path):
    rows = [{"qid": "q", "query": "x", "positives": [passage("a", "t", score=1.0)], "negatives": [passage("b", "t")]}]
    src = table(tmp_path / "g", GROUPS_SCHEMA, rows)
    with pytest.raises(InputError, match="passage b has no teacher score"):
        export(tmp_path, "margin_mse_tsv", src)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_refuses_incomplete_or_wrong_inputs_and_existing_outputs(tmp_path):
    rows = [{"qid": "1", "pid": "a", "relevance": 1}]
    with pytest.raises(IncompleteOutputError, match="no _manifest.json"):
        export(tmp_path, "trec_qrels", table(tmp_path / "nomanifest", QRELS_SCHEMA, rows, manifest=False))
    qrels = table(tmp_path / "qrels", QRELS_SCHEMA, rows)
    with pytest.raises(InputError, match=r"lacks column\(s\) \['rank', 'score'\]"):
        export(tmp_path, "trec_run", qrels)
    export(tmp_path, "trec_qrels", qrels)
    with pytest.raises(ConfigError, match="exists; pass overwrite=true"):
        export(tmp_path, "trec_qrels", qrels)
    export(tmp_path, "trec_qrels", qrels, overwrite=True)
    with pytest.raises(ConfigError, match="tag"):
        ExportConfig(format="trec_run", input="x", output="y", tag="two words").validate()


def test_cli_export(tmp_path):
    rows = [{"qid": "1", "pid": "a", "rank": 1, "score": 0.5}]
    src = table(tmp_path / "run", RUN_SCHEMA, rows)
    rc = main(["export", str(ROOT / "configs/export/trec_run.yaml"), f"input={src}", f"output={tmp_path / 'r.trec'}", "tag=x"])
    assert rc == 0 and (tmp_path / "r.trec").read_text() == "1 Q0 a 1 0.5 x\n"


def test_trec_run_parses_with_pytrec_eval(tmp_path):
    import pytrec_eval

    rows = [{"qid": q, "pid": f"d{i}", "rank": i + 1, "score": 5.0 - i} for q in ("1", "2") for i in range(3)]
    out = export(tmp_path, "trec_run", table(tmp_path / "run", RUN_SCHEMA, rows))
    assert pytrec_eval.parse_run(open(out)) == {q: {f"d{i}": 5.0 - i for i in range(3)} for q in ("1", "2")}


# --- npy and faiss: embeddings and indexes for tools without densekit ------------------------------


def embeddings(path, n=23, dim=8, seed=0):
    """An embeddings table as encode writes it (several parts), and its vectors and ids."""
    import numpy as np

    from densekit.data import records as R

    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype("float32")
    ids = [f"p{i}" for i in range(n)]
    col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    with TableWriter(path, R.embeddings_schema(dim), rows_per_part=10) as w:
        w.write(pa.table({R.ID: pa.array(ids), R.EMBEDDING: col}, schema=R.embeddings_schema(dim)))
    write_manifest(path, "encode", {"dim": dim, "metric": "ip", "model": "m", "model_fingerprint": "fp"})
    return path, vectors, ids


def test_npy_equals_the_table_read_by_numpy(tmp_path):
    import numpy as np

    src, vectors, ids = embeddings(tmp_path / "emb")
    out = export(tmp_path, "npy", src)
    array = np.load(out / "embeddings.npy")
    assert array.dtype == np.float32 and array.shape == vectors.shape
    np.testing.assert_array_equal(array, vectors)
    assert (out / "ids.txt").read_text().splitlines() == ids
    with pytest.raises(InputError, match="embedding"):  # a table of another kind
        export(tmp_path, "npy", table(tmp_path / "run", RUN_SCHEMA, [{"qid": "q", "pid": "d", "rank": 1, "score": 1.0}]), "o2")
    assert main(["export", "format=npy", f"input={src}", f"output={out}", "overwrite=true"]) == 0


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8"])
def test_faiss_merges_the_shards_into_one_index(tmp_path, ray_session, factory):
    """faiss.read_index reads one index whose search equals the sharded search: brute force over
    every vector for Flat, the shards searched one by one (same nprobe) and merged for IVF; HNSW,
    rebuilt, holds every vector under its id and finds nearly all brute-force best matches."""
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    from densekit.config import IndexConfig, load_config
    from densekit.pipelines.index import index, load_shard

    src, vectors, ids = embeddings(tmp_path / "emb", n=64, seed=1)
    idx = tmp_path / "index"
    index(load_config(IndexConfig, overrides=[f"embeddings={src}", f"output={idx}", f"factory={factory}",
                                               "train_size=64"]))
    out = export(tmp_path, "faiss", idx)
    merged = faiss.read_index(str(out / "index.faiss"))
    labels = (out / "ids.txt").read_text().splitlines()
    assert merged.ntotal == len(labels) == 64 and sorted(labels) == sorted(ids)
    queries, k = vectors[:10] + 0.01, 5
    if factory == "HNSW8":
        stored = merged.reconstruct_n(0, merged.ntotal)
        np.testing.assert_array_equal(stored, vectors[[ids.index(p) for p in labels]])
        _, found = merged.search(vectors, 1)
        best = (vectors @ vectors.T).argmax(axis=1)
        assert np.mean([labels[f] == ids[b] for f, b in zip(found[:, 0], best)]) >= 0.9
        return
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(merged).nprobe = 2
    scores, found = merged.search(queries, k)
    got = [[labels[i] for i in row] for row in found]
    if factory == "Flat":
        ref = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
        assert got == [[ids[i] for i in row] for row in ref]
        return
    manifest = json.loads((idx / "_manifest.json").read_text())
    per_shard = []
    for shard in manifest["shards"]:
        s = load_shard(idx / shard["dir"], factory, mmap=False)
        faiss.extract_index_ivf(s).nprobe = 2
        sid = pq.read_table(idx / shard["dir"] / "ids.parquet").column("id").to_pylist()
        d, i = s.search(queries, k)
        per_shard.append([[(dd, sid[ii]) for dd, ii in zip(dr, ir) if ii >= 0] for dr, ir in zip(d, i)])
    ref = [[p for _, p in sorted(sum((rows[q] for rows in per_shard), []), key=lambda t: -t[0])[:k]]
           for q in range(len(queries))]
    assert got == ref
    np.testing.assert_allclose(scores[:, 0], [max(dd for rows in per_shard for dd, _ in rows[q][:1]) for q in range(10)],
                               rtol=1e-5)


def test_faiss_refuses_a_folder_that_is_not_an_index(tmp_path):
    src, _, _ = embeddings(tmp_path / "emb")
    with pytest.raises(InputError, match="not an index folder"):
        export(tmp_path, "faiss", src)
