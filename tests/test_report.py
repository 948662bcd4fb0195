"""`densekit report`: the numbers of a run's evaluations reach report.md and report.json unchanged,
each row names the right model, stage times are listed, the plot is a valid PNG, and query speed
is timed the same way for every model (warm-up, interleaved passes, best of N)."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, prepare_output, write_manifest
from densekit.cli import main
from densekit.config import QuerySpeedConfig, SearchConfig
from densekit.data import records as R
from densekit.errors import ConfigError
from densekit.methods import run
from densekit.report import collect, time_encoders

QUERIES = {"q1": "where do foxes sleep", "q2": "what do dogs eat", "q3": "lazy dog"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}}
# Teacher: q1's relevant document at rank 1, q2's at rank 2.
#   MRR@10 = (1 + 1/2) / 2 = 0.75; nDCG@10 = (1 + 1/log2(3)) / 2; Recall@100 = 1.
# Student: q1's at rank 3, q2's not retrieved (it scores 0, trec_eval -c).
#   MRR@10 = (1/3 + 0) / 2; nDCG@10 = (1/log2(4) + 0) / 2 = 0.25; Recall@100 = 1/2.
RUNS = {
    "teacher": {"q1": ["d1", "d5", "d6"], "q2": ["d7", "d2"]},
    "student": {"q1": ["d5", "d6", "d1"], "q2": ["d7", "d8"]},
}
EXPECTED = {
    "teacher": {"ndcg@10": (1 + 1 / math.log2(3)) / 2, "mrr@10": 0.75, "recall@100": 1.0},
    "student": {"ndcg@10": 0.25, "mrr@10": 1 / 6, "recall@100": 0.5},
}


def _table(directory, schema, columns):
    with TableWriter(directory, schema) as w:
        w.write(pa.table(columns, schema=schema))
    write_manifest(directory, "test")
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 2-layer teacher (hidden 64) and a 1-layer student (hidden 32), as plain HF directories."""
    from densekit.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    texts = list(QUERIES.values()) + ["the quick brown fox jumps over the lazy dog"] * 2
    return {
        "teacher": build_tiny_model(
            root / "teacher", texts, layers=2, hidden=64, heads=2, intermediate=128, seed=0
        ),
        "student": build_tiny_model(
            root / "student", texts, layers=1, hidden=32, heads=2, intermediate=64, seed=1
        ),
    }


@pytest.fixture
def inputs(tmp_path, models):
    """Queries and qrels tables, and for each model a search output (its config.yaml names the
    model and the queries, as `densekit search` writes it) holding the run above."""
    data = tmp_path / "data"
    queries = _table(
        data / "queries", R.QUERIES_SCHEMA, {R.QID: list(QUERIES), R.TEXT: list(QUERIES.values())}
    )
    rows = [(q, p, r) for q, d in QRELS.items() for p, r in d.items()]
    qrels = _table(
        data / "qrels",
        R.QRELS_SCHEMA,
        {
            R.QID: [r[0] for r in rows],
            R.PID: [r[1] for r in rows],
            R.RELEVANCE: [r[2] for r in rows],
        },
    )
    runs = {}
    for name, run_ in RUNS.items():
        out = data / f"search_{name}"
        prepare_output(
            out,
            SearchConfig(
                index=str(data / "index"),
                output=str(out),
                queries=str(queries),
                model=str(models[name]),
            ),
        )
        cols = {R.QID: [], R.PID: [], R.RANK: [], R.SCORE: []}
        for qid, pids in run_.items():
            for rank, pid in enumerate(pids, 1):
                cols[R.QID].append(qid)
                cols[R.PID].append(pid)
                cols[R.RANK].append(rank)
                cols[R.SCORE].append(10.0 - rank)
        with TableWriter(out, R.RUN_SCHEMA) as w:
            w.write(pa.table(cols, schema=R.RUN_SCHEMA))
        write_manifest(out, "search")
        runs[name] = out
    return {"queries": queries, "qrels": qrels, "runs": runs}


def _method(tmp_path, inputs, output):
    m = tmp_path / "m.yaml"
    stages = "".join(
        f"  eval_{name}:\n    step: evaluate\n    set: {{run: {inputs['runs'][name]}, qrels: {inputs['qrels']}}}\n"
        for name in ("teacher", "student")
    )
    m.write_text(
        f"name: demo\noutput: {output}\n"
        "report_set: {speed: {num_queries: 3, batch_size: 2, repeats: 2}}\n"
        f"stages:\n{stages}"
    )
    return m


def _numbers(md: str, label: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_method_run_report_has_the_evaluated_numbers(tmp_path, inputs, models):
    out = tmp_path / "run"
    assert run([str(_method(tmp_path, inputs, out))]) == 0  # writes the report at the end
    md = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    assert list(rows) == ["teacher", "student"]
    for name, expected in EXPECTED.items():
        cells = _numbers(md, name)
        # | model | layers x hidden | params | nDCG@10 | MRR@10 | Recall@100 | queries/s | speed-up |
        assert [float(c) for c in cells[3:6]] == [
            round(expected[k], 4) for k in ("ndcg@10", "mrr@10", "recall@100")
        ]
        for k, v in expected.items():
            assert rows[name]["metrics"][k] == pytest.approx(v, abs=1e-12)
        assert rows[name]["model"] == str(models[name])
        assert rows[name]["queries"] == str(inputs["queries"])
        speed = rows[name]["speed"]
        assert speed["num_queries"] == 3 and speed["batch_size"] == 2 and len(speed["seconds"]) == 2
        assert speed["queries_per_s"] == pytest.approx(3 / min(speed["seconds"]))
        # The fastest pass, then the slowest and fastest in brackets (the spread of the timing).
        lo, hi = 3 / max(speed["seconds"]), 3 / min(speed["seconds"])
        assert cells[6] == f"{speed['queries_per_s']:,.0f} ({lo:,.0f}–{hi:,.0f})"
    assert _numbers(md, "teacher")[1] == "2 x 64" and _numbers(md, "student")[1] == "1 x 32"
    assert _numbers(md, "teacher")[7] == "1.0x"
    ratio = rows["student"]["speed"]["queries_per_s"] / rows["teacher"]["speed"]["queries_per_s"]
    assert _numbers(md, "student")[7] == f"{ratio:.1f}x"
    # Stages with their times, as method-demo.json recorded them.
    status = json.loads((out / "method-demo.json").read_text())
    for i, name in enumerate(["eval_teacher", "eval_student"], 1):
        seconds = status["stages"][name]["seconds"]
        assert f"| {i} | {name} | evaluate | {seconds:.0f} s | done |" in md
    # The plot: a real PNG of the size asked for.
    from PIL import Image

    with Image.open(out / "quality_vs_speed.png") as img:
        img.verify()
    with Image.open(out / "quality_vs_speed.png") as img:
        assert img.format == "PNG" and img.size == (768, 528)
    assert "![quality against query speed](quality_vs_speed.png)" in md


def test_comparison_with_a_baseline_run_is_reported_by_row(tmp_path, inputs):
    """An evaluate stage with `baseline` (the student against the teacher's run): the report names
    the baseline by its row and gives the paired differences, which are the metrics' differences."""
    from densekit.report import Report, comparison_lines

    out = tmp_path / "run"
    m = _method(tmp_path, inputs, out)
    m.write_text(
        m.read_text().replace(
            f"{{run: {inputs['runs']['student']}, qrels: {inputs['qrels']}}}",
            f"{{run: {inputs['runs']['student']}, qrels: {inputs['qrels']}, baseline: {inputs['runs']['teacher']}}}",
        )
    )
    assert run([str(m), "report_set.speed.enabled=false"]) == 0
    rep = Report.load(out / "report.json")
    teacher, student = rep.rows
    assert teacher.comparison is None and student.comparison["baseline"] == "teacher"
    for k in ("ndcg@10", "mrr@10", "recall@100"):
        assert student.comparison["metrics"][k]["diff"] == pytest.approx(
            EXPECTED["student"][k] - EXPECTED["teacher"][k]
        )
    [line] = comparison_lines(rep)
    assert line.startswith("student vs teacher (2 queries, paired): ")
    assert f"mrr@10 {1 / 6 - 0.75:+.4f} (t-test p=" in line
    assert f"- {line}" in (out / "report.md").read_text()


def test_rerun_keeps_stage_times_and_moved_run_still_reports(tmp_path, inputs, models):
    out = tmp_path / "run"
    m = _method(tmp_path, inputs, out)
    assert run([str(m), "report=false"]) == 0
    assert not (out / "report.md").exists()
    first = json.loads((out / "method-demo.json").read_text())["stages"]
    assert run([str(m), "report=false"]) == 0  # every stage skipped: times kept
    second = json.loads((out / "method-demo.json").read_text())["stages"]
    for name in first:
        assert second[name]["seconds"] == first[name]["seconds"] and second[name]["skipped"]
    # The run folder moved: the recorded paths inside it are found again.
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(out), moved)
    assert main(["report", str(moved), "speed.enabled=false"]) == 0
    md = (moved / "report.md").read_text()
    assert [float(c) for c in _numbers(md, "teacher")[3:6]] == [0.8155, 0.75, 1.0]
    assert "skipped (complete)" in md
    assert not (moved / "quality_vs_speed.png").exists()  # no speed, nothing to plot


def test_only_one_stage_still_lists_all_stages(tmp_path, inputs):
    out = tmp_path / "run"
    assert (
        run(
            [
                str(_method(tmp_path, inputs, out)),
                "--only",
                "eval_student",
                "report_set.speed.enabled=false",
            ]
        )
        == 0
    )
    md = (out / "report.md").read_text()
    assert "| 1 | eval_teacher | evaluate | – | not run |" in md
    assert "evaluate stage 'eval_teacher' has no complete output yet" in md
    assert [r.label for r in collect(out).rows] == ["student"]


def test_train_output_report(tmp_path, models):
    """A train output: rows from summary.json (final and best), its model timed."""
    out = tmp_path / "train"
    shutil.copytree(models["student"], out / "model")
    shutil.copytree(models["student"], out / "best")
    (out / "config.yaml").write_text(f"eval:\n  queries: {tmp_path / 'q'}\n")
    _table(tmp_path / "q", R.QUERIES_SCHEMA, {R.QID: ["a", "b"], R.TEXT: ["lazy dog", "quick fox"]})
    final = {
        "step": 20,
        "loss": 0.5,
        "loss/contrastive": 0.3,
        "loss/kl_distill": 0.125,
        "queries_per_s": 100.0,
        "ndcg@10": 0.4,
        "mrr@10": 0.3,
        "recall@100": 0.9,
    }
    best = {**final, "step": 10, "ndcg@10": 0.45}
    (out / "summary.json").write_text(
        json.dumps({"step": 20, "final": final, "best_step": 10, "best": best, "metric": "ndcg@10"})
    )
    assert main(["report", str(out), "speed.repeats=1", "speed.batch_size=1"]) == 0
    md = (out / "report.md").read_text()
    assert _numbers(md, "model (step 20)")[3:6] == ["0.4000", "0.3000", "0.9000"]
    assert _numbers(md, "best (step 10)")[3:6] == ["0.4500", "0.3000", "0.9000"]
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert all(r["speed"]["num_queries"] == 2 for r in rows)
    # Each loss term under its own name, not the weighted total beside other runs' totals.
    assert "| final losses (each term) |" in md
    assert "contrastive 0.3000, kl_distill 0.1250" in md and "| 0.5000 |" not in md
    assert (out / "quality_vs_speed.png").stat().st_size > 1000


def test_not_a_run_folder(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["report", str(tmp_path / "x")]) == 2
    with pytest.raises(ConfigError, match="not a method run"):
        collect(tmp_path / "x")
    with pytest.raises(ConfigError, match="speed: num_queries"):
        from densekit.config import load_config

        load_config(QuerySpeedConfig, None, ["repeats=0"])


def test_time_encoders_warms_up_interleaves_and_keeps_the_fastest_pass():
    """A fake clock: each encoder call advances it by that encoder's next duration."""
    now = [0.0]
    calls: list[tuple[str, int]] = []
    # Per pass of 2 batches: A takes 1+1, then 3+1, then 0.5+0.5 seconds; B always 2+2.
    durations = {"A": iter([9, 9, 1, 1, 3, 1, 0.5, 0.5]), "B": iter([9, 9, 2, 2, 2, 2, 2, 2])}

    def encoder(name):
        def encode(batch):
            calls.append((name, len(batch)))
            now[0] += next(durations[name])

        return encode

    speeds = time_encoders(
        {"A": encoder("A"), "B": encoder("B")},
        ["q"] * 5,
        batch_size=3,
        repeats=3,
        warmup=1,
        clock=lambda: now[0],
    )
    # Warm-up (A, A, B, B: the 9 s calls are not timed), then passes interleaved A, B, A, B, ...
    assert [c[0] for c in calls] == ["A", "A", "B", "B"] + ["A", "A", "B", "B"] * 3
    assert [c[1] for c in calls[:2]] == [3, 2]  # consecutive batches of batch_size
    assert speeds["A"].seconds == [2, 4, 1] and speeds["A"].best_seconds == 1
    assert speeds["A"].queries_per_s == 5.0
    assert speeds["B"].queries_per_s == 5 / 4
    with pytest.raises(ValueError, match="no query texts"):
        time_encoders({"A": encoder("A")}, [], 2, 1)


def test_one_table_per_evaluation_set(tmp_path, inputs, models):
    """Evaluations against different qrels (an in-domain and a zero-shot collection) get a table
    each, every table with its own speed-up base; the numbers stay those of their evaluation."""
    other = _table(
        tmp_path / "data" / "qrels_other",
        R.QRELS_SCHEMA,
        {R.QID: ["q1"], R.PID: ["d5"], R.RELEVANCE: [1]},
    )  # teacher rank 2, student rank 1
    m = tmp_path / "m.yaml"
    stages = "".join(
        f"  eval_{name}_{tag}:\n    step: evaluate\n    set: {{run: {inputs['runs'][name]}, qrels: {qrels}}}\n"
        for tag, qrels in (("a", inputs["qrels"]), ("b", other))
        for name in ("teacher", "student")
    )
    out = tmp_path / "run"
    m.write_text(
        f"name: demo\noutput: {out}\nreport_set: {{speed: {{num_queries: 3, batch_size: 2, repeats: 2}}}}\n"
        f"stages:\n{stages}"
    )
    assert run([str(m)]) == 0
    md = (out / "report.md").read_text()
    first, second = (
        md.index(f"### Evaluated on `{inputs['qrels']}`"),
        md.index(f"### Evaluated on `{other}`"),
    )
    assert first < second
    in_a, in_b = md[first:second], md[second : md.index("##", second + 4)]
    assert "| teacher [eval_teacher_a] | 2 x 64 | " in in_a and "[eval_teacher_b]" not in in_a
    assert _numbers(in_b, "student [eval_student_b]")[3:5] == [
        "1.0000",
        "1.0000",
    ]  # nDCG@10, MRR@10
    assert _numbers(in_b, "teacher [eval_teacher_b]")[4] == "0.5000"
    assert _numbers(in_b, "teacher [eval_teacher_b]")[7] == "1.0x"


def test_a_model_evaluated_twice_is_timed_once(tmp_path, inputs, models, caplog):
    """A teacher evaluated on several collections is one model: its query encoding is timed once
    and every row of it shows that timing (the real tier's report timed 18 rows for 8 models)."""
    out = tmp_path / "run"
    m = tmp_path / "m.yaml"
    stages = "".join(
        f"  {stage}:\n    step: evaluate\n    set: {{run: {inputs['runs'][name]}, qrels: {inputs['qrels']}}}\n"
        for stage, name in (
            ("eval_teacher", "teacher"),
            ("eval_teacher_again", "teacher"),
            ("eval_student", "student"),
        )
    )
    m.write_text(
        f"name: demo\noutput: {out}\nreport_set: {{speed: {{num_queries: 3, batch_size: 2, repeats: 2}}}}\n"
        f"stages:\n{stages}"
    )
    caplog.set_level(logging.INFO, logger="densekit.report.timing")
    assert run([str(m)]) == 0
    assert "timing query encoding of 2 model(s)" in caplog.text
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert len(rows) == 3
    teacher_rows = [r for r in rows if r["model"] == str(models["teacher"])]
    assert (
        len(teacher_rows) == 2 and teacher_rows[0]["speed"] == teacher_rows[1]["speed"] is not None
    )
