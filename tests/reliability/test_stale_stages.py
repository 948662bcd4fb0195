"""A method stage built from an earlier version of one of its inputs is stale: when a stage before it
is redone (here on purpose, with another seed), the next run redoes every stage that read it,
instead of skipping them as complete (issue #17). Each stage's inputs are fingerprinted (a densekit
output by its manifest, other folders and files by their files' sizes and times) in the method's
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
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text('{"a": 1}')
    (tmp_path / "out" / "part-00000.parquet").write_text("x")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    inputs = {"o": str(tmp_path / "out"), "m": str(tmp_path / "model"), "x": str(tmp_path / "nothing")}
    a = input_fingerprints(inputs)
    assert a["x"] == "missing"
    (tmp_path / "out" / "part-00000.parquet").write_text("y")  # the manifest decides for an output
    assert input_fingerprints(inputs)["o"] == a["o"]
    (tmp_path / "out" / "manifest.json").write_text('{"a": 2}')
    assert input_fingerprints(inputs)["o"] != a["o"]
    (tmp_path / "model" / "config.json").write_text('{"hidden": 3}')  # size changes
    assert input_fingerprints(inputs)["m"] != a["m"]
