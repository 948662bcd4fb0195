"""`densekit run`: multi-stage methods resume by stage, refer to earlier outputs, never write
outside the run folder, and validate without data (--dry-run)."""

from __future__ import annotations

import json

import pytest

from densekit.cli import main
from densekit.errors import ConfigError
from densekit.methods import run


def beir(root):
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n" for i in range(4))
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(2))
    )
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\nq1\td2\t1\n")
    return root


def method(tmp_path, stages: str, output=None):
    p = tmp_path / "m.yaml"
    p.write_text(
        f"name: demo\noutput: {output or tmp_path / 'run'}\n"
        f"vars: {{data: {tmp_path / 'beir'}}}\nstages:\n{stages}"
    )
    return p


STAGES = """
  data:
    step: import
    set: {format: beir, path: "${vars.data}"}
  qrels:
    step: export
    set: {format: trec_qrels, input: "@data/qrels/test"}
"""


def test_runs_stages_then_skips_them(tmp_path, caplog):
    beir(tmp_path / "beir")
    m = method(tmp_path, STAGES)
    # The export stage writes a file at <run>/qrels: it is not a directory output; see below.
    assert run([str(m)]) == 0
    out = tmp_path / "run"
    assert (out / "qrels").read_text().splitlines() == ["q0 0 d1 1", "q1 0 d2 1"]
    status = json.loads((out / "method-demo.json").read_text())
    assert list(status["stages"]) == ["data", "qrels"]
    caplog.clear()
    caplog.set_level("INFO")
    before = (out / "data" / "_manifest.json").stat().st_mtime_ns
    assert run([str(m)]) == 0
    assert "data (import): complete, skipping" in caplog.text
    assert (out / "data" / "_manifest.json").stat().st_mtime_ns == before
    # --only reruns one stage on purpose.
    assert run([str(m), "--only", "data"]) == 0
    assert (out / "data" / "_manifest.json").stat().st_mtime_ns != before


def test_dry_run_without_data(tmp_path, capsys):
    m = method(tmp_path, STAGES)  # the BEIR folder does not exist
    assert run([str(m), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "1. data: import" in text and "2. qrels: export" in text
    assert f"in  input = {tmp_path / 'run' / 'data'}/qrels/test" in text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "stages, message",
    [
        ('  a:\n    step: export\n    set: {format: trec_qrels, input: "@b"}\n  b:\n    step: import\n    set: {format: beir, path: x}\n',
         "refers to a later stage"),
        ('  a:\n    step: export\n    set: {format: trec_qrels, input: "@nope"}\n', "names no stage"),
        ('  a:\n    step: exprot\n', "unknown step 'exprot'. Did you mean 'export'"),
        ('  a:\n    step: import\n    set: {format: beir, path: x, output: /tmp/elsewhere}\n', "is set by the runner"),
        ('  a:\n    step: export\n    set: {format: trec_qrels, input: "@a/../../etc"}\n', "names no stage|later stage|'..'"),
        ('  Bad-Name:\n    step: import\n', "stage name 'Bad-Name'"),
    ],
)
def test_bad_methods_fail_before_running(tmp_path, stages, message):
    m = method(tmp_path, stages)
    with pytest.raises(ConfigError, match=message):
        run([str(m), "--dry-run"])


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    m = method(tmp_path, '  a:\n    step: exprot\n')
    assert main(["run", str(m)]) == 2
    assert main(["run", str(m), "--from", "zzz"]) == 2


CHAINED = """
  search:
    step: tune
    set:
      base: {base}
      space: {{optim.lr: {{grid: [1.0e-3, 1.0e-4]}}}}
      num_trials: 1
      metric: ndcg@10
  chosen:
    step: train
    config: "{config}"
    set: {{optim.max_steps: 40}}
"""


def test_a_stage_config_written_by_an_earlier_stage(tmp_path, capsys):
    """`config: "@search/best_config.yaml"`: a search, then its best config retrained in the same
    method. The file does not exist until the search has run: the plan says so, and running the
    retrain alone first fails with what to do (the run itself: tests/train/test_tune.py)."""
    base = tmp_path / "base.yaml"
    base.write_text(
        "model: {path: models/student}\ndata: {train: runs/groups}\n"
        "losses: {contrastive: {}}\noptim: {max_steps: 8}\n"
        "eval: {every: 4, queries: runs/q, qrels: runs/qrels, corpus: runs/corpus}\noutput: ???\n"
    )
    m = method(tmp_path, CHAINED.format(base=base, config="@search/best_config.yaml"))
    assert run([str(m), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"in  config = {tmp_path / 'run' / 'search'}/best_config.yaml" in text
    assert "config written by stage 'search'" in text
    with pytest.raises(ConfigError, match="stage 'search' writes it: run that stage first"):
        run([str(m), "--only", "chosen"])
    for config, message in [("@chosen/x.yaml", "refers to a later stage"), ("@nope/x.yaml", "names no stage"),
                            ("@search/../../x.yaml", "may not contain '..'")]:
        with pytest.raises(ConfigError, match=message):
            run([str(method(tmp_path, CHAINED.format(base=base, config=config))), "--dry-run"])
