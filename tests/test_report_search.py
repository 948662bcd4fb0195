"""The search section of a tune report: trial counts, the chosen and the default trial, the gain over
the default, each trial's curve, the time the trials held, and the two plots; read from the files
`densekit tune` writes (no Ray here: the search itself is tested in tests/train/test_tune.py)."""

from __future__ import annotations

import json

import pytest

from densekit.cli import main
from densekit.errors import InputError
from densekit.report import collect

BASE = """\
model: {path: m, student_layers: [0, 5]}
optim: {lr: 0.0001, max_steps: 300}
eval: {every: 100, queries: null}
resources: {num_workers: 1, cpus_per_worker: 2.0, use_gpu: false}
"""
# Trial c is the default ([0, 5]); b is best; a was stopped by ASHA at its first rung.
TRIALS = [
    {"trial_id": "a", "params": {"model.student_layers": [2, 3]}, "status": "stopped", "steps": 100,
     "max_steps": 300, "best": 0.21, "best_step": 100, "history": [{"step": 100, "ndcg@10": 0.21}],
     "seconds": 50.0},
    {"trial_id": "b", "params": {"model.student_layers": [0, 4]}, "status": "finished", "steps": 300,
     "max_steps": 300, "best": 0.62, "best_step": 200,
     "history": [{"step": 100, "ndcg@10": 0.5}, {"step": 200, "ndcg@10": 0.62}, {"step": 300, "ndcg@10": 0.61}],
     "seconds": 150.0},
    {"trial_id": "c", "params": {"model.student_layers": [0, 5]}, "status": "finished", "steps": 300,
     "max_steps": 300, "best": 0.58, "best_step": 300,
     "history": [{"step": 100, "ndcg@10": 0.45}, {"step": 200, "ndcg@10": 0.55}, {"step": 300, "ndcg@10": 0.58}]},
]


def _tune_output(tmp_path, trials=TRIALS):
    d = tmp_path / "tune"
    (d / "trials").mkdir(parents=True)
    (d / "base_config.yaml").write_text(BASE)
    (d / "trials.jsonl").write_text("".join(json.dumps({**t, "metric": "ndcg@10"}) + "\n" for t in trials))
    # Trial c has no "seconds" (a search recorded before trials.jsonl kept them): Tune's result.json
    # has it, the last report counting.
    res = d / "search" / "train_trial_c_0"
    res.mkdir(parents=True)
    res.joinpath("result.json").write_text(
        json.dumps({"trial_id": "c", "time_total_s": 40.0}) + "\n"
        + json.dumps({"trial_id": "c", "time_total_s": 160.0}) + "\n{cut by a ki"
    )
    return d


def test_search_section_has_counts_chosen_default_gain_curves_and_time(tmp_path):
    d = _tune_output(tmp_path)
    s = collect(d).search
    assert s["keys"] == ["model.student_layers"]
    assert s["counts"] == {"finished": 2, "stopped": 1, "error": 0}
    assert s["chosen"] == "b" and s["default_trial"] == "c"
    assert s["default"] == {"model.student_layers": [0, 5]}
    assert s["gain_over_default"] == pytest.approx(0.62 - 0.58)
    assert s["trial_seconds"] == pytest.approx(50 + 150 + 160)

    assert main(["report", str(d), "speed.enabled=false"]) == 0
    md = (d / "report.md").read_text()
    assert "3 trials over model.student_layers" in md
    assert "2 ran to the end (300 steps), 1 stopped early by ASHA, 0 failed" in md
    assert "Trial time 6 min 00 s in all; CPU time held by the trials 12 min 00 s (2 CPU per trial)" in md
    assert "**Chosen**: trial b, model.student_layers=[0, 4]: ndcg@10 0.6200 at step 200" in md
    assert "trial c, ndcg@10 0.5800; the search's gain over it: +0.0400 on dev" in md
    row = next(line for line in md.splitlines() if line.startswith("| b (chosen) |"))
    assert [c.strip() for c in row.strip("|").split("|")][1:9] == [
        "[0, 4]", "finished", "300", "0.6200", "200", "0.5000", "0.6200", "0.6100"]
    stopped = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert [c.strip() for c in stopped.strip("|").split("|")][6:8] == ["0.2100", ""]
    assert "| c (default) |" in md
    for png in ("tune_curves.png", "tune_space.png"):
        assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in md
    # report.json keeps the search for other tools.
    assert json.loads((d / "report.json").read_text())["search"]["chosen"] == "b"


def test_default_not_searched_says_so(tmp_path):
    d = _tune_output(tmp_path, TRIALS[:2])
    s = collect(d).search
    assert s["default_trial"] is None and s["gain_over_default"] is None
    assert main(["report", str(d), "speed.enabled=false"]) == 0
    assert "not among the trials, so no gain over it is measured" in (d / "report.md").read_text()


def test_bad_trial_row_names_the_line(tmp_path):
    d = _tune_output(tmp_path)
    with open(d / "trials.jsonl", "a") as f:
        f.write(json.dumps({"trial_id": "d", "status": "finished"}) + "\n")
    with pytest.raises(InputError, match=r"trials.jsonl.*4.*'params'"):
        collect(d)


def test_a_search_that_has_not_finished_is_reported_from_its_trial_folders(tmp_path):
    # No trials.jsonl yet: trial a ended (metrics.jsonl + summary.json), b is mid-way (two
    # checkpoints, the newer one counts; a third is being written: no state file yet), c has
    # started without a checkpoint.
    d = tmp_path / "tune"
    (d / "trials").mkdir(parents=True)
    (d / "base_config.yaml").write_text(BASE)
    (d / "_config.yaml").write_text("metric: ndcg@10\nspace:\n  model.student_layers: {grid: [[0, 5], [0, 4], [1, 2]]}\n")
    for tid, layers in (("a", [0, 5]), ("b", [0, 4]), ("c", [1, 2])):
        (d / "trials" / tid).mkdir()
        (d / "trials" / tid / "_config.yaml").write_text(
            f"model: {{path: m, student_layers: {layers}}}\noptim: {{max_steps: 300}}\n")
    a = d / "trials" / "a"
    a.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 100, "ndcg@10": 0.4, "loss": 1.0}, {"step": 150, "loss": 0.9},
        {"step": 200, "ndcg@10": 0.5}, {"step": 300, "ndcg@10": 0.5})))
    a.joinpath("summary.json").write_text("{}")
    for name, hist in (("ck1", [{"step": 100, "ndcg@10": 0.3}]),
                       ("ck2", [{"step": 100, "ndcg@10": 0.3}, {"step": 200, "ndcg@10": 0.6}])):
        ck = d / "trials" / "b" / "checkpoints" / name
        ck.mkdir(parents=True)
        ck.joinpath("trainer_state.json").write_text(json.dumps({"step": hist[-1]["step"], "history": hist}))
    (d / "trials" / "b" / "checkpoints" / "ck3").mkdir()

    assert main(["report", str(d), "speed.enabled=false"]) == 0
    s = collect(d).search
    by_id = {t["trial_id"]: t for t in s["trials"]}
    assert [by_id[t]["status"] for t in "abc"] == ["finished", "unfinished", "unfinished"]
    assert by_id["a"]["history"] == [{"step": 100, "ndcg@10": 0.4}, {"step": 200, "ndcg@10": 0.5},
                                     {"step": 300, "ndcg@10": 0.5}]
    assert (by_id["a"]["best"], by_id["a"]["best_step"], by_id["a"]["steps"]) == (0.5, 200, 300)
    assert (by_id["b"]["best"], by_id["b"]["best_step"], by_id["b"]["steps"]) == (0.6, 200, 200)
    assert by_id["c"]["history"] == [] and by_id["c"]["best"] is None
    assert by_id["b"]["params"] == {"model.student_layers": [0, 4]}
    assert s["counts"] == {"finished": 1, "stopped": 0, "error": 0, "unfinished": 2}
    assert s["chosen"] == "b" and s["default_trial"] == "a" and s["gain_over_default"] == pytest.approx(0.1)
    md = (d / "report.md").read_text()
    assert "**The search has not finished**" in md and "**Best so far**: trial b" in md
