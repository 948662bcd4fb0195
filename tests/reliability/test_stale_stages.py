"""A method stage built from an earlier version of one of its inputs is stale: when a stage before it
is redone (here on purpose, with another seed), the next run redoes every stage that read it,
instead of skipping them as complete (issue #17). Each stage's inputs are fingerprinted (a densekit
output by its manifest's listed files, other folders and files by their contents) in the method's
status file."""

from __future__ import annotations

import json
import logging

from densekit.artifacts import read_table
from densekit.methods import input_fingerprints, run


def _method(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text(
        f"name: demo\noutput: {tmp_path / 'run'}\nreport: false\nstages:\n"
        "  task:\n    step: generate\n"
        "    set: {num_docs: 60, num_train_queries: 40, num_dev_queries: 10, seed: 1}\n"
        "  split:\n    step: trainset\n"
        "    set: {corpus: '@task/corpus', queries: '@task/queries', qrels: '@task/qrels/train', dev_queries: 5}\n"
    )
    return p


def test_a_stage_whose_input_was_redone_is_redone(tmp_path, caplog, tally):
    caplog.set_level(logging.INFO, logger="densekit")
    m = _method(tmp_path)
    assert run([str(m)]) == 0
    split = tmp_path / "run" / "split"
    first = read_table(split / "train_queries").to_pylist()
    status = json.loads((tmp_path / "run" / "method-demo.json").read_text())
    assert set(status["stages"]["split"]["inputs"]) == {"corpus", "qrels", "queries"}

    # A plain rerun skips both (nothing changed).
    caplog.clear()
    assert run([str(m)]) == 0
    assert caplog.text.count("complete, skipping") == 2

    # The task is redone on purpose with another seed: different queries, same table paths.
    assert run([str(m), "--only", "task", "stages.task.set.seed=2"]) == 0
    caplog.clear()
    assert run([str(m), "stages.task.set.seed=2"]) == 0
    assert "split (trainset): its input(s) corpus, qrels, queries changed since it ran: redoing it" in caplog.text
    again = read_table(split / "train_queries").to_pylist()
    assert again != first
    task_queries = {r["qid"]: r["text"] for r in read_table(tmp_path / "run" / "task" / "queries").to_pylist()}
    assert all(task_queries[r["qid"]] == r["text"] for r in again), "split still holds the old task's queries"
    tally.bad_input("method rerun after a stage before it was redone (stale stages redone)")


def test_fingerprints(tmp_path):
    """By content: a manifest's listed files (not its creation time), other files' bytes (not
    their modification times)."""
    import os
    import shutil

    def manifest(created: str, sha: str) -> str:
        return json.dumps({"created": created, "files": {"part-00000.parquet": {"bytes": 1, "sha256": sha},
                                                         "corpus/manifest.json": {"bytes": 9, "sha256": created}}})

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(manifest("t1", "aa"))
    (tmp_path / "out" / "part-00000.parquet").write_text("x")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"hidden": 2}')
    inputs = {"o": str(tmp_path / "out"), "m": str(tmp_path / "model"), "x": str(tmp_path / "nothing")}
    a = input_fingerprints(inputs)
    assert a["x"] == "missing"
    # An output redone with the same content: a new creation time (and nested manifests' hashes).
    (tmp_path / "out" / "manifest.json").write_text(manifest("t2", "aa"))
    assert input_fingerprints(inputs)["o"] == a["o"]
    (tmp_path / "out" / "manifest.json").write_text(manifest("t2", "bb"))  # a listed file changed
    assert input_fingerprints(inputs)["o"] != a["o"]
    # A model folder copied elsewhere (new times, same bytes) is the same input; new bytes are not.
    shutil.copytree(tmp_path / "model", tmp_path / "copy")
    os.utime(tmp_path / "copy" / "config.json", (1, 1))
    assert input_fingerprints({"m": str(tmp_path / "copy")})["m"] == a["m"]
    (tmp_path / "copy" / "config.json").write_text('{"hidden": 3}')  # same size, new content
    assert input_fingerprints({"m": str(tmp_path / "copy")})["m"] != a["m"]


def test_a_redone_stage_with_the_same_result_leaves_later_stages_alone(tmp_path, caplog):
    """Redoing the task with the same seed writes the same tables (a new manifest time): the split
    built from it is still current and is skipped."""
    caplog.set_level(logging.INFO, logger="densekit")
    m = _method(tmp_path)
    assert run([str(m)]) == 0
    assert run([str(m), "--only", "task"]) == 0
    caplog.clear()
    assert run([str(m)]) == 0
    assert caplog.text.count("complete, skipping") == 2, caplog.text


def test_fingerprints_of_an_earlier_scheme_are_not_compared():
    from densekit.stage_status import changed_inputs

    now = {"a": "c1:" + "0" * 64}
    assert changed_inputs({"a": "f" * 64}, now) == []  # recorded by an earlier densekit: no redo
    assert changed_inputs({"a": "c1:" + "1" * 64}, now) == ["a"]
    assert changed_inputs({"a": "missing"}, now) == ["a"]
