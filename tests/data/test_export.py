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
    with pytest.raises(IncompleteOutputError, match="no manifest.json"):
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
