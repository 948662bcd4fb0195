"""No writes outside the run folder (issue #17): a step never writes into its inputs (the id lookup
of `import ... corpus= queries=` used to be cached as `lookup-<key>/` inside the input tables), and
in a method file every path a stage writes (output*, lookup_cache, margin_mse_tsv) must lie inside
the method's run folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from densekit.artifacts import is_complete, read_table
from densekit.config import ImportConfig
from densekit.data.importer import import_data
from densekit.errors import ConfigError
from densekit.methods import run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tables(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "collection.tsv").write_text("".join(f"p{i}\tpassage number {i}\n" for i in range(30)))
    (src / "queries.tsv").write_text("".join(f"q{i}\tquery number {i}\n" for i in range(5)))
    (src / "qrels.trec").write_text("".join(f"q{i} 0 p{i} 1\n" for i in range(5)))
    (src / "teacher.tsv").write_text("".join(f"1.5\t0.5\tq{i}\tp{i}\tp{i + 10}\n" for i in range(5)))
    corpus, queries = tmp_path / "corpus", tmp_path / "queries"
    import_data(ImportConfig(format="msmarco_collection", path=str(src / "collection.tsv"), output=str(corpus)))
    import_data(ImportConfig(format="msmarco_collection", kind="queries", path=str(src / "queries.tsv"),
                             output=str(queries)))
    return {"src": src, "corpus": corpus, "queries": queries}


@pytest.mark.parametrize("fmt,file", [("trec_qrels", "qrels.trec"), ("margin_mse_tsv", "teacher.tsv")])
def test_import_writes_nothing_into_its_input_tables(fmt, file, tables, tmp_path, tally):
    before = {k: snapshot(tables[k]) for k in ("corpus", "queries")}
    out = tmp_path / "out"
    import_data(ImportConfig(format=fmt, path=str(tables["src"] / file), corpus=str(tables["corpus"]),
                             queries=str(tables["queries"]), output=str(out)))
    assert is_complete(out) and read_table(out).num_rows == 5
    for k in ("corpus", "queries"):
        assert snapshot(tables[k]) == before[k], f"import wrote into its input table {k}"
    assert not [p for p in out.iterdir() if p.name.startswith(".densekit-lookup")], "the lookup was left behind"
    tally.bad_input(f"import {fmt} with corpus= and queries= (input tables left untouched)")


def _method(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(
        f"name: demo\noutput: {tmp_path / 'run'}\nstages:\n"
        f"  groups:\n    step: import\n    set: {{format: margin_mse_tsv, path: {tmp_path / 'teacher.tsv'}, "
        f"corpus: {tmp_path / 'corpus'}, queries: {tmp_path / 'queries'}{extra}}}\n"
    )
    return p


@pytest.mark.parametrize("key", ["lookup_cache"])
def test_a_method_stage_may_not_write_outside_its_run_folder(key, tmp_path, tally):
    elsewhere = tmp_path / "elsewhere"
    m = _method(tmp_path, f", {key}: {elsewhere}")
    with pytest.raises(ConfigError) as e:
        run([str(m), "--dry-run"])
    msg = str(e.value)
    assert f"{key}={elsewhere}" in msg and "outside the run folder" in msg, msg
    assert not elsewhere.exists()
    # '..' out of the run folder is no way around it.
    m = _method(tmp_path, f", {key}: {tmp_path / 'run' / '..' / 'x'}")
    with pytest.raises(ConfigError, match="outside the run folder"):
        run([str(m), "--dry-run"])
    tally.bad_input(f"method stage with {key} outside the run folder")
    # Inside the run folder it is fine.
    assert run([str(_method(tmp_path, f", {key}: {tmp_path / 'run' / 'cache'}")), "--dry-run"]) == 0


def test_a_score_stage_may_not_write_its_tsv_outside_the_run_folder(tmp_path, tally):
    p = tmp_path / "m.yaml"
    p.write_text(
        f"name: demo\noutput: {tmp_path / 'run'}\nstages:\n"
        f"  scored:\n    step: score\n    set: {{groups: {tmp_path / 'groups'}, teachers: [{{model: {tmp_path / 'ce'}}}], "
        f"margin_mse_tsv: /tmp/elsewhere-{tmp_path.name}.tsv}}\n"
    )
    with pytest.raises(ConfigError, match="margin_mse_tsv=.*outside the run folder"):
        run([str(p), "--dry-run"])
    tally.bad_input("method score stage with margin_mse_tsv outside the run folder")
