"""`densekit import`: every kind of bad input is refused with file, line and what was expected (or
counted with on_error=skip), nothing partial looks complete, and memory stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from densekit.artifacts import is_complete, read_manifest, read_table
from densekit.cli import main
from densekit.config import ImportConfig
from densekit.data import importer
from densekit.data.importer import import_data
from densekit.errors import ConfigError, InputError


def imp(tmp: Path, fmt: str, content: str | bytes, name: str = "t", **kw) -> Path:
    src = tmp / f"{name}.in"
    if isinstance(content, str):
        content = content.encode("utf-8")
    src.write_bytes(content)
    cfg = ImportConfig(format=fmt, path=str(src), output=str(tmp / name), **kw)
    cfg.validate()
    import_data(cfg)
    return tmp / name


def refused(tmp: Path, fmt: str, content, line: int | None, *expected: str, **kw) -> InputError:
    with pytest.raises(InputError) as ei:
        imp(tmp, fmt, content, **kw)
    msg = str(ei.value)
    where = f"t.in:{line}:" if line is not None else "t.in:"
    assert where in msg, msg
    for e in expected:
        assert e in msg, msg
    assert not (tmp / "t").exists(), "a failed import must leave nothing behind"
    return ei.value


def test_wrong_column_count(tmp_path):
    refused(tmp_path, "msmarco_collection", "1\tok\n2\tbad\textra\n", 2, "expected 2 tab-separated columns", "got 3")
    refused(tmp_path, "trec_run", "1 Q0 D1 1 2.0 tag\n1 Q0 D2 2 1.0\n", 2, "expected 6 whitespace-separated columns")
    refused(tmp_path, "msmarco_docs", "D1\turl\ttitle\n", 1, "docid<TAB>url<TAB>title<TAB>body")


@pytest.mark.parametrize(
    "fmt,content,line,expected",
    [
        ("trec_run", "1 Q0 D1 1 2.0 t\n1 Q0 D2 2 high t\n", 2, "score 'high' is not a finite number"),
        ("trec_run", "1 Q0 D1 1 2.0 t\n1 Q0 D2 2 nan t\n", 2, "score 'nan' is not a finite number"),
        ("trec_run", "1 Q0 D1 first 2.0 t\n", 1, "rank 'first' is not an integer"),
        ("trec_qrels", "1 0 D1 1\n1 0 D2 1.5\n", 2, "relevance '1.5' is not an integer"),
        ("beir_qrels", "query-id\tcorpus-id\tscore\n1\tD1\tyes\n", 2, "score 'yes' is not an integer"),
        ("margin_mse_tsv", "x\t1.0\t1\t0\t1\n", 1, "pos_score 'x' is not a finite number"),
    ],
)
def test_non_numeric_fields(tmp_path, fmt, content, line, expected):
    kw = {}
    if fmt == "margin_mse_tsv":
        kw = dict(corpus=str(_corpus(tmp_path)), queries=str(_queries(tmp_path)))
    refused(tmp_path, fmt, content, line, expected, **kw)


def test_empty_id_and_control_characters(tmp_path):
    refused(tmp_path, "msmarco_collection", "1\tok\n\tno id\n", 2, "empty pid")
    refused(tmp_path, "msmarco_collection", "1\tok\n2\x07\tbell\n", 2, "contains whitespace or a control character")
    refused(tmp_path, "beir_corpus", '{"_id": "a b", "text": "x"}\n', 1, "'a b' contains whitespace")
    refused(tmp_path, "msmarco_collection", "1\tok\n2\tnul\x00byte\n", 2, "NUL byte")


def test_missing_columns_and_fields(tmp_path):
    refused(tmp_path, "beir_qrels", "query-id\tcorpus-id\n1\tD1\n", 1, "lacks column(s) ['score']")
    refused(tmp_path, "dpr_tsv", "id\ttext\n1\tx\ty\n", 1, "expected the columns ['id', 'text', 'title']")
    refused(tmp_path, "beir_corpus", '{"_id": "1", "text": "a"}\n{"_id": "2", "title": "t"}\n', 2, "missing field 'text'")
    refused(tmp_path, "beir_queries", '{"text": "a"}\n', 1, "missing field '_id'")
    refused(tmp_path, "prod_json", '[{"query_id": "1", "query_string": "q", "neg_id": []}]', 1,
            "missing list 'pos_id'", corpus=str(_corpus(tmp_path)))


def test_invalid_utf8_names_the_line(tmp_path):
    refused(tmp_path, "msmarco_collection", b"1\tok\n2\tfine\n3\tbad \xff\xfe byte\n", 3, "invalid UTF-8")
    refused(tmp_path, "dpr_json", b'[\n{"question": "ok"},\n{"question": "\xc3("}\n]', 3, "invalid UTF-8")


def test_duplicate_ids_name_both_lines(tmp_path):
    refused(tmp_path, "msmarco_collection", "1\ta\n2\tb\n3\tc\n2\td\n", 4, "duplicate pid '2' (first on line 2)")
    refused(tmp_path, "beir_queries", '{"_id": "q", "text": "a"}\n{"_id": "q", "text": "b"}\n', 2, "duplicate qid 'q'")


def test_duplicate_across_batches(tmp_path):
    body = "".join(f"{i}\tpassage {i}\n" for i in range(500)) + "17\tagain\n"
    refused(tmp_path, "msmarco_collection", body, 501, "duplicate pid '17' (first on line 18)", batch_rows=32)


def test_hash_collisions_are_not_duplicates(tmp_path, monkeypatch):
    """With a deliberately terrible hash (id length), distinct ids collide all the time: the exact
    re-check must keep them all, in both modes, and still catch the real duplicate."""
    monkeypatch.setattr(importer, "hash_ids", lambda ids: np.array([len(x) for x in ids.to_pylist()], np.uint64))
    body = "10\ta\n11\tb\n12\tc\n5\td\n"
    t = imp(tmp_path, "msmarco_collection", body)
    assert read_table(t).column("pid").to_pylist() == ["10", "11", "12", "5"]
    t = imp(tmp_path, "msmarco_collection", body + "11\tdup\n13\te\n", name="skip", on_error="skip", batch_rows=2)
    assert sorted(read_table(t).column("pid").to_pylist()) == ["10", "11", "12", "13", "5"]
    assert read_manifest(t)["skipped"] == {"duplicate_id": 1}
    with pytest.raises(InputError, match=r"raise.in:5: duplicate pid '11' \(first on line 2\)"):
        imp(tmp_path, "msmarco_collection", body + "11\tdup\n", name="raise")


def test_empty_file_and_header_only(tmp_path):
    refused(tmp_path, "msmarco_collection", "", None, "empty file")
    refused(tmp_path, "msmarco_collection", "\n\n  \n", None, "empty file")
    refused(tmp_path, "dpr_json", "  \n", None, "empty file")
    refused(tmp_path, "beir_qrels", "query-id\tcorpus-id\tscore\n", None, "no valid rows")
    refused(tmp_path, "dpr_json", "[]", None, "no valid rows")


def _corpus(tmp: Path) -> Path:
    if not (tmp / "corpus").exists():
        imp(tmp, "msmarco_collection", "0\tzero\n1\tone\n2\ttwo\n", name="corpus")
    return tmp / "corpus"


def _queries(tmp: Path) -> Path:
    if not (tmp / "queries").exists():
        imp(tmp, "msmarco_collection", "q1\tfirst query\nq2\tsecond query\n", name="queries", kind="queries")
    return tmp / "queries"


def test_unknown_ids(tmp_path):
    c, q = str(_corpus(tmp_path)), str(_queries(tmp_path))
    refused(tmp_path, "trec_qrels", "q1 0 0 1\nq1 0 9 1\n", 2, "pid '9' is not in the corpus table", corpus=c)
    refused(tmp_path, "beir_qrels", "query-id\tcorpus-id\tscore\nq3\t0\t1\n", 2, "qid 'q3' is not in the queries table",
            corpus=c, queries=q)
    refused(tmp_path, "trec_run", "q1 Q0 0 1 1.0 t\nq1 Q0 42 2 0.5 t\n", 2, "pid '42'", corpus=c, queries=q)
    refused(tmp_path, "margin_mse_tsv", "1\t0\tq1\t0\t1\n1\t0\tq1\t0\t77\n", 2, "pid '77' is not in the corpus",
            corpus=c, queries=q)
    refused(tmp_path, "margin_mse_tsv", "1\t0\tq9\t0\t1\n", 1, "qid 'q9' is not in the queries table", corpus=c, queries=q)
    lead = json.dumps([{"question": "a", "positive_ctxs": [0], "hard_negative_ctxs": [1]},
                       {"question": "b", "positive_ctxs": [1], "hard_negative_ctxs": [5]}], indent=1)
    err = refused(tmp_path, "dpr_json", lead, None, "pid '5' is not in the corpus", corpus=c)
    assert err.line == lead.splitlines().index(" {", 2) + 1  # the line where record 2 starts


def test_invalid_json_names_the_line(tmp_path):
    bad = '[\n  {"question": "a", "positive_ctxs": [1]},\n  {"question": "b" "positive_ctxs": [2]}\n]'
    refused(tmp_path, "dpr_json", bad, 3, "invalid JSON in record 2")
    refused(tmp_path, "dpr_json", '[{"question": "a", "positive_ctxs": ["1"]}', None, "not closed")
    refused(tmp_path, "beir_corpus", '{"_id": "1", "text": "a"}\n{"_id": "2", "text": }\n', 2, "invalid JSON")


def test_skip_counts_reasons_in_manifest(tmp_path):
    c = str(_corpus(tmp_path))
    body = ("q1 0 0 1\n"
            "q1 0 1 x\n"  # bad_number
            "q1 0 2\n"  # malformed_line
            "q1 0 99 1\n"  # unknown_pid
            "q1 0 98 1\n"  # unknown_pid
            "q2 0 2 2\n")
    t = imp(tmp_path, "trec_qrels", body, on_error="skip", corpus=c, max_logged_errors=1)
    m = read_manifest(t)
    assert m["rows"] == 2
    assert m["skipped"] == {"bad_number": 1, "malformed_line": 1, "unknown_pid": 2}
    coll = b"1\ta\n2\tb\n1\tagain\n\t\n3\tc\n2\tthird\n5\n" + b"4\t\xff\n"
    t = imp(tmp_path, "msmarco_collection", coll, name="c2", on_error="skip", batch_rows=2)
    assert read_table(t).column("pid").to_pylist() == ["1", "2", "3"]
    assert read_manifest(t)["skipped"] == {"duplicate_id": 2, "empty_id": 1, "invalid_utf8": 1, "malformed_line": 1}


def test_skip_in_training_files_drops_the_group(tmp_path):
    c, q = str(_corpus(tmp_path)), str(_queries(tmp_path))
    t = imp(tmp_path, "margin_mse_tsv", "1\t0\tq1\t0\t1\n2\t1\tq1\t0\t77\n3\t0\tq9\t1\t2\n", on_error="skip",
            corpus=c, queries=q)
    assert read_manifest(t)["skipped"] == {"unknown_pid": 1, "unknown_qid": 1}
    assert read_table(t).num_rows == 1


def test_all_rows_skipped_is_an_error(tmp_path):
    refused(tmp_path, "msmarco_collection", "a\tb\tc\n", None, "no valid rows", "malformed_line", on_error="skip")


def test_failure_part_way_leaves_nothing_complete(tmp_path):
    body = "".join(f"{i}\tpassage {i}\n" for i in range(300)) + "oops\n"
    with pytest.raises(InputError, match=":301:"):
        imp(tmp_path, "msmarco_collection", body, rows_per_part=50, batch_rows=10)
    assert not is_complete(tmp_path / "t") and not (tmp_path / "t").exists()
    # A complete earlier output with another config is not replaced silently ...
    ok = imp(tmp_path, "msmarco_collection", "1\ta\n")
    with pytest.raises(ConfigError, match="different config"):
        import_data(ImportConfig(format="msmarco_collection", path=str(tmp_path / "t.in"), output=str(ok),
                                 rows_per_part=7))
    assert is_complete(ok)


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="needs corpus"):
        ImportConfig(format="margin_mse_tsv", path="x", output="y").validate()
    with pytest.raises(ConfigError, match="Did you mean 'trec_run'"):
        ImportConfig(format="trec_rum", path="x", output="y").validate()
    with pytest.raises(ConfigError, match="no such file"):
        import_data(ImportConfig(format="trec_run", path=str(tmp_path / "missing"), output=str(tmp_path / "o")))


def test_cli_prints_the_error_without_traceback(tmp_path, caplog):
    (tmp_path / "c.tsv").write_text("1\ta\n1\tb\n")
    rc = main(["import", "format=msmarco_collection", f"path={tmp_path / 'c.tsv'}", f"output={tmp_path / 'o'}"])
    assert rc == 2
    assert "c.tsv:2: duplicate pid '1' (first on line 1)" in caplog.text


def test_reader_batches_are_bounded(tmp_path):
    """A corpus much bigger than the batch size goes through in bounded batches."""
    from densekit.data import io

    (tmp_path / "c.tsv").write_text("".join(f"{i}\t{'w' * 100}\n" for i in range(1000)))
    sizes = [b.num_rows for b in io.read_id_text(tmp_path / "c.tsv", batch_rows=64)]
    assert max(sizes) == 64 and sum(sizes) == 1000
    sizes = [b.num_rows for b in io.read_id_text(tmp_path / "c.tsv", batch_rows=10_000, batch_bytes=2_000)]
    assert max(sizes) <= 20 and sum(sizes) == 1000  # ~105 bytes a line: the byte bound wins
    t = imp(tmp_path, "msmarco_collection", (tmp_path / "c.tsv").read_text(), batch_rows=64, rows_per_part=300)
    m = read_manifest(t)
    assert m["rows"] == 1000 and m["max_batch_rows"] == 64
    assert sum(1 for f in m["files"] if f.endswith(".parquet")) == 4


PEAK = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from densekit.config import ImportConfig
    from densekit.data.importer import import_data
    path, out = sys.argv[1], sys.argv[2]
    import_data(ImportConfig(format="msmarco_docs", path=path, output=out, batch_rows=128, rows_per_part=2000))
    # VmHWM of this process (ru_maxrss would include the forking pytest process: it survives exec).
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
    print(pa.default_memory_pool().max_memory(), hwm)
    """
)


def test_import_memory_does_not_grow_with_the_file(tmp_path):
    """Small version of bench/import_memory.py: 10x more rows, about the same peak memory."""
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"])

    def write(path: Path, n: int) -> None:
        with open(path, "w") as f:
            for i in range(n):
                f.write(f"D{i}\thttp://x/{i}\ttitle {i}\t{' '.join(rng.choice(words, 400))}\n")

    peaks = {}
    for n in (1_500, 15_000):  # ~4 MB and ~40 MB of text
        write(tmp_path / f"{n}.tsv", n)
        out = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / f"{n}.tsv"), str(tmp_path / f"o{n}")],
                             capture_output=True, text=True, check=True)
        arrow, rss_kb = map(int, out.stdout.split())
        peaks[n] = (arrow, rss_kb)
        assert read_manifest(tmp_path / f"o{n}")["rows"] == n
    (a_small, r_small), (a_big, r_big) = peaks[1_500], peaks[15_000]
    assert a_big < 2 * a_small + (4 << 20), peaks  # Arrow's peak does not scale with rows
    assert r_big - r_small < 30_000, peaks  # RSS grows < 30 MB while the input grows by ~36 MB


def test_training_batches_are_bounded_by_passages(tmp_path):
    """A training group's size is its passages (texts are filled in): batches count passages."""
    from densekit.data import io

    recs = [{"question": f"q{i}", "positive_ctxs": [0], "hard_negative_ctxs": list(range(1, 30))} for i in range(20)]
    (tmp_path / "b.json").write_text(json.dumps(recs))
    sizes = [b.num_rows for b in io.read_dpr_json(tmp_path / "b.json", batch_rows=100)]
    assert sizes == [4, 4, 4, 4, 4]  # 30 passages a group: the 4th group reaches 100 passages
    (tmp_path / "m.tsv").write_text("".join(f"1\t0\tq{i}\t0\t1\n" for i in range(10)))
    assert [b.num_rows for b in io.read_margin_mse_tsv(tmp_path / "m.tsv", batch_rows=8)] == [4, 4, 2]


def test_training_texts_need_the_tables(tmp_path):
    refused(tmp_path, "dpr_json", '[{"question": "a", "positive_ctxs": [3]}]', 1,
            "pid '3': no passage text in the file; expected corpus=<table>")
    refused(tmp_path, "prod_json", '[{"query_id": "q1", "pos_id": ["0"], "neg_id": []}]', 1,
            "qid 'q1': no query text in the file; expected queries=<table>", corpus=str(_corpus(tmp_path)))
