"""Never destroy a user's files (issue #17): densekit clears or replaces only an output folder it
wrote itself (its manifest or its `.densekit-output` marker), refuses an output that is a file, a
non-empty folder of the user's, or that is, holds or lies inside one of the step's inputs, and
says so before any work; a partial output densekit started still resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densekit.artifacts import is_complete, prepare_output, read_manifest, write_manifest
from densekit.cli import main
from densekit.config import EncodeConfig, GenerateConfig, ImportConfig
from densekit.data.importer import import_data
from densekit.errors import ConfigError

QUERIES = "q1\twhat is dense retrieval\nq2\thow are encoders trained\n"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_users_folder_given_as_output_is_refused_and_kept(tmp_path, tally, caplog):
    """The issue's case: output= a folder holding the user's files (and the input itself)."""
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("three weeks of notes")
    (mine / "sub").mkdir()
    (mine / "sub" / "data.bin").write_bytes(b"\x00" * 1000)
    src = mine / "queries.tsv"
    src.write_text(QUERIES)
    before = snapshot(mine)
    rc = main(["import", "format=msmarco_collection", "kind=queries", f"path={src}", f"output={mine}"])
    tally.bad_input("output= a user's folder that holds the input")
    assert rc == 2, "the step must fail, not exit 0"
    assert snapshot(mine) == before, "densekit deleted or changed the user's files"
    assert str(mine) in caplog.text and "destroy" in caplog.text, caplog.text


def test_a_non_empty_folder_densekit_did_not_write_is_never_cleared(tmp_path, tally):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "a.jpg").write_bytes(b"jpeg")
    src = tmp_path / "queries.tsv"
    src.write_text(QUERIES)
    for overwrite in (False, True):
        with pytest.raises(ConfigError) as ei:
            import_data(ImportConfig(format="msmarco_collection", kind="queries", path=str(src), output=str(mine), overwrite=overwrite))
        msg = str(ei.value)
        assert str(mine) in msg and "did not write" in msg and "Choose" in msg, msg
        assert snapshot(mine) == {"a.jpg": b"jpeg"}
        tally.bad_input(f"output= a non-empty folder of the user's (overwrite={overwrite})")
    # A folder with a manifest.json that is not densekit's is no exception.
    (mine / "manifest.json").write_text('{"name": "my web app"}')
    with pytest.raises(ConfigError, match="did not write"):
        import_data(ImportConfig(format="msmarco_collection", kind="queries", path=str(src), output=str(mine), overwrite=True))
    assert (mine / "a.jpg").exists()


def test_an_output_that_is_a_file_is_refused(tmp_path, tally):
    src = tmp_path / "queries.tsv"
    src.write_text(QUERIES)
    target = tmp_path / "results.csv"
    target.write_text("precious")
    with pytest.raises(ConfigError, match=r"results\.csv is an existing file"):
        import_data(ImportConfig(format="msmarco_collection", kind="queries", path=str(src), output=str(target), overwrite=True))
    assert target.read_text() == "precious"
    tally.bad_input("output= an existing regular file")


@pytest.mark.parametrize("where", ["same", "inside"])
def test_an_output_on_or_inside_an_input_is_refused_before_any_work(where, tmp_path, tiny_model_dir, tally):
    """A complete densekit table given both as input and (with overwrite=true) as output: it used
    to be cleared first, then read."""
    src = tmp_path / "queries.tsv"
    src.write_text(QUERIES)
    table = tmp_path / "queries"
    import_data(ImportConfig(format="msmarco_collection", kind="queries", path=str(src), output=str(table)))
    before = snapshot(table)
    out = table if where == "same" else table / "emb"
    cfg = EncodeConfig(input=str(table), model=str(tiny_model_dir), output=str(out), overwrite=True)
    rc = main(["encode", f"input={table}", f"model={tiny_model_dir}", f"output={out}", "overwrite=true"])
    assert rc == 2
    with pytest.raises(ConfigError, match="would destroy the input") as ei:
        from densekit.pipelines.encode import encode

        encode(cfg)
    assert "input=" in str(ei.value) and str(table) in str(ei.value)
    assert snapshot(table) == before and is_complete(table)
    tally.bad_input(f"output {where} the input")


def test_an_output_that_holds_the_model_is_refused(tmp_path, tiny_model_dir, tally):
    import shutil

    parent = tmp_path / "work"
    shutil.copytree(tiny_model_dir, parent / "model")
    cfg = EncodeConfig(input=str(tmp_path / "nothing"), model=str(parent / "model"), output=str(parent))
    with pytest.raises(ConfigError, match=r"contains the input model="):
        prepare_output(parent, cfg)
    assert (parent / "model" / "config.json").exists()
    tally.bad_input("output a folder that holds the model")


def test_densekit_outputs_still_resume_and_restart(tmp_path):
    """What densekit wrote it still manages: a partial output of the same config keeps its
    finished pieces (keep_partial), a partial one is wiped otherwise, overwrite replaces a
    complete one, and an empty folder is taken."""
    from densekit.artifacts import MARKER

    out = tmp_path / "gen"
    cfg = GenerateConfig(output=str(out))
    assert prepare_output(out, cfg) is True
    assert json.loads((out / MARKER).read_text())["step"] == "generate"
    (out / "part-00000.parquet").write_text("finished shard")
    assert prepare_output(out, cfg, keep_partial=True) is True
    assert (out / "part-00000.parquet").exists()
    assert prepare_output(out, cfg) is True and not (out / "part-00000.parquet").exists()
    write_manifest(out, "generate")
    assert MARKER not in read_manifest(out)["files"]
    assert prepare_output(out, cfg) is False
    assert prepare_output(out, GenerateConfig(output=str(out), seed=3), overwrite=True) is True
    # A partial output of densekit before the marker existed: its config.yaml is this config.
    old = tmp_path / "old"
    assert prepare_output(old, cfg) is True
    (old / MARKER).unlink()
    (old / "part-00000.parquet").write_text("finished shard")
    assert prepare_output(old, cfg, keep_partial=True) is True and (old / "part-00000.parquet").exists()
    # An empty folder (e.g. made by the user for it) is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_output(empty, cfg) is True
    # Another step's partial output is not taken without overwrite.
    with pytest.raises(ConfigError, match="step 'generate'"):
        prepare_output(out, ImportConfig(format="trec_run", path=str(tmp_path / "x"), output=str(out)))
