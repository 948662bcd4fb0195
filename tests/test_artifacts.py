"""Atomic outputs and manifests: nothing partial ever looks complete."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from densekit.artifacts import (
    TableWriter,
    atomic_path,
    is_complete,
    iter_table,
    prepare_output,
    read_manifest,
    read_table,
    write_manifest,
)
from densekit.config import GenerateConfig, LossConfig, TrainConfig
from densekit.data.records import QUERIES_SCHEMA
from densekit.errors import ConfigError, IncompleteOutputError, InputError


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("ok")
        assert not target.exists()
    assert target.read_text() == "ok"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_table_writer_parts_and_manifest(tmp_path):
    out = tmp_path / "queries"
    with TableWriter(out, QUERIES_SCHEMA, rows_per_part=4, row_group_size=3) as w:
        for i in range(0, 10, 3):
            w.write({"qid": [str(j) for j in range(i, min(i + 3, 10))], "text": ["t"] * len(range(i, min(i + 3, 10)))})
    assert sorted(p.name for p in out.glob("*.parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert not is_complete(out)
    with pytest.raises(IncompleteOutputError, match="no _manifest.json"):
        read_manifest(out)
    m = write_manifest(out, "test", {"skipped": 0})
    assert m["rows"] == 10 and m["skipped"] == 0
    assert read_table(out).column("qid").to_pylist() == [str(i) for i in range(10)]
    assert sum(b.num_rows for b in iter_table(out, batch_size=2)) == 10
    # A truncated part file is detected by size, then by content.
    part = out / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(IncompleteOutputError, match="part-00001.parquet has"):
        read_manifest(out)
    with pytest.raises(InputError, match="part-00001.parquet"):
        read_table(out)


def test_empty_table_keeps_schema(tmp_path):
    with TableWriter(tmp_path / "t", QUERIES_SCHEMA) as w:
        pass
    assert w.rows == 0
    assert read_table(tmp_path / "t").schema == QUERIES_SCHEMA


def test_deep_manifest_check_catches_changed_bytes(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "a.txt").write_text("abc")
    write_manifest(out, "test")
    (out / "a.txt").write_text("abd")
    read_manifest(out, deep=False)  # same size: the cheap check passes
    with pytest.raises(IncompleteOutputError, match="sha256"):
        read_manifest(out, deep=True)
    with pytest.raises(IncompleteOutputError, match="changed since it was written"):
        read_manifest(out)  # the default when a step opens an artifact (issue #17)


def test_a_report_written_into_an_output_is_not_part_of_its_manifest(tmp_path):
    # `densekit report` may write into a folder before its step ends (a search that still runs) and
    # rewrites its files each time: listed in the manifest, they would make the output look changed.
    from densekit.artifacts.names import REPORT_FILES
    from densekit.report import PLOT_PNG, REPORT_JSON, REPORT_MD
    from densekit.report.search import CURVES_PNG, SPACE_PNG

    assert {REPORT_MD, REPORT_JSON, PLOT_PNG, CURVES_PNG, SPACE_PNG} == set(REPORT_FILES)
    out = tmp_path / "o"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("abc")
    for name in REPORT_FILES:
        (out / name).write_text("first report")
    (out / "sub" / "report.md").write_text("a file of the step's own")
    files = write_manifest(out, "test")["files"]
    assert sorted(files) == ["a.txt", "sub/report.md"]
    (out / "report.md").write_text("the report, written again")
    read_manifest(out)


def test_prepare_output_skip_resume_conflict(tmp_path):
    out = tmp_path / "task"
    cfg = GenerateConfig(output=str(out))
    assert prepare_output(out, cfg) is True
    assert (out / "_config.yaml").exists()
    (out / "x.txt").write_text("partial")
    # Incomplete: wiped and redone.
    assert prepare_output(out, cfg) is True and not (out / "x.txt").exists()
    write_manifest(out, "generate")
    # Complete, same config: nothing to do.
    assert prepare_output(out, cfg) is False
    # Complete, different config: refused unless overwrite.
    other = GenerateConfig(output=str(out), seed=1)
    with pytest.raises(ConfigError, match="differs in: seed"):
        prepare_output(out, other)
    assert prepare_output(out, other, overwrite=True) is True
    assert not is_complete(out)
    # keep_partial keeps finished pieces of the same config.
    (out / "shard-0.parquet").write_text("done")
    assert prepare_output(out, other, keep_partial=True) is True
    assert (out / "shard-0.parquet").exists()
    assert json.loads(json.dumps(1)) == 1


def test_logging_and_resources_do_not_make_a_conflict(tmp_path):
    """A train output saved before `progress_every_s` existed (or with another value, or other
    workers) is still the same computation: reused, not refused; a loss setting is not."""
    out = tmp_path / "train"
    cfg = TrainConfig(output=str(out), losses={"contrastive": LossConfig()})
    assert prepare_output(out, cfg) is True
    saved = yaml.safe_load((out / "_config.yaml").read_text())
    del saved["progress_every_s"]  # as written by the version before the option
    (out / "_config.yaml").write_text(yaml.safe_dump(saved))
    write_manifest(out, "train")
    assert prepare_output(out, cfg) is False
    quiet = dataclasses.replace(cfg, progress_every_s=0.0)
    more = dataclasses.replace(quiet, resources=dataclasses.replace(cfg.resources, num_workers=2))
    assert prepare_output(out, more) is False
    with pytest.raises(ConfigError, match="differs in: optim.lr"):
        prepare_output(out, dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1.0)))
