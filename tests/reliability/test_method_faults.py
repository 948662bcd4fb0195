"""A method run killed between stages (kill -9 right after a stage completed, by the test-only fault
hook of tests/support/faultsite/densekit_faults.py) and rerun with the same command: the finished stages are skipped (the log names
each), the rest run, and the outputs equal those of an uninterrupted run of the same method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from densekit.artifacts import read_table

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long]

ROOT = Path(__file__).resolve().parents[2]

# A tiny method: a generated task, a tiny student, its own negatives, a short training, evaluation.
# The student trains on in-batch negatives only (group_size 1): the untrained model's retrieval is
# full of near-ties whose order depends on float noise of the encoding batches, so negatives mined
# from it differ between two independent runs; the positives (from the qrels) do not.
METHOD = """
name: tiny
output: {output}
report: false
stages:
  task:
    step: generate
    set: {{seed: 0, num_docs: 200, num_train_queries: 300, num_dev_queries: 40, num_topics: 10,
          num_concepts: 400, concepts_per_doc: 8, concepts_per_query: 4, query_length: 8}}
  init:
    step: build
    set: {{texts: ["@task/corpus", "@task/queries"], layers: 2, hidden: 32, heads: 2, seed: 0}}
  init_emb: {{step: encode, set: {{model: "@init", input: "@task/corpus"}}}}
  init_index: {{step: index, set: {{embeddings: "@init_emb"}}}}
  init_run: {{step: search, set: {{index: "@init_index", queries: "@task/queries", model: "@init", k: 20}}}}
  groups:
    step: mine
    set: {{run: "@init_run", qrels: "@task/qrels/train", queries: "@task/queries", corpus: "@task/corpus",
          max_rank: 20, num_negatives: 3}}
  student:
    step: train
    set:
      model: {{path: "@init", pooling: mean, similarity: dot, dropout: 0.0}}
      data: {{train: "@groups", group_size: 1}}
      losses: {{contrastive: {{params: {{temperature: 1.0}}}}}}
      optim: {{lr: 3.0e-3, batch_size: 16, max_steps: 12, warmup_steps: 2}}
  student_emb: {{step: encode, set: {{model: "@student/model", input: "@task/corpus"}}}}
  student_index: {{step: index, set: {{embeddings: "@student_emb"}}}}
  student_run: {{step: search, set: {{index: "@student_index", queries: "@task/queries", model: "@student/model", k: 20}}}}
  student_eval: {{step: evaluate, set: {{run: "@student_run", qrels: "@task/qrels/dev", metrics: [mrr@10, ndcg@10]}}}}
results:
  student: "@student_eval"
"""
KILL_AFTER = "student"
BEFORE = ["task", "init", "init_emb", "init_index", "init_run", "groups", "student"]
AFTER = ["student_emb", "student_index", "student_run", "student_eval"]


def write_method(root: Path, output: Path) -> Path:
    path = root / f"{output.parent.name}.yaml"
    path.write_text(METHOD.format(output=output))
    return path


def densekit_run(method: Path, cwd: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **env_extra}
    env["RAY_ADDRESS"] = "local"  # a fresh local Ray per run, never a cluster another `ray start` left
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "densekit.cli", "run", str(method)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1200,
    )


def mtimes(run_dir: Path, stages: list[str]) -> dict[str, int]:
    return {s: (run_dir / s / "_manifest.json").stat().st_mtime_ns for s in stages}


def test_killed_between_stages_resumes_with_the_same_outputs(tmp_path, tally):
    # Two folders whose paths have the same length (paths are part of every stage's config).
    reference = tmp_path / "ref" / "run"
    faulty = tmp_path / "bad" / "run"
    marker = tmp_path / "fault.marker"

    # The reference run has no fault plan at all.
    ref = densekit_run(write_method(tmp_path, reference), tmp_path, {"DKTEST_FAULT_PLAN": ""})
    assert ref.returncode == 0, ref.stderr[-3000:]

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"kill_after_stage": KILL_AFTER, "marker": str(marker)}))
    method = write_method(tmp_path, faulty)
    killed = densekit_run(method, tmp_path, {"DKTEST_FAULT_PLAN": str(plan)})
    assert killed.returncode == 137, killed.stderr[-3000:]
    assert marker.exists()
    tally.fault(f"method run killed (exit 137) right after stage '{KILL_AFTER}'")
    # Killed between stages: everything up to the kill is complete, nothing after it exists.
    for s in BEFORE:
        assert (faulty / s / "_manifest.json").is_file(), s
    for s in AFTER:
        assert not (faulty / s).exists(), s
    assert not (faulty / "results-tiny.json").exists()
    done = mtimes(faulty, BEFORE)

    again = densekit_run(method, tmp_path, {"DKTEST_FAULT_PLAN": str(plan)})
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stderr
    for i, s in enumerate(BEFORE, 1):
        assert f"[{i}/{len(BEFORE) + len(AFTER)}] {s} (" in log and f"{s} (" in log
        line = next(x for x in log.splitlines() if f"] {s} (" in x)
        assert "complete, skipping" in line, line
    for s in AFTER:
        line = next(x for x in log.splitlines() if f"] {s} (" in x)
        assert "running" in line, line
    assert mtimes(faulty, BEFORE) == done, "a finished stage was redone"
    status = json.loads((faulty / "method-tiny.json").read_text())
    assert [s for s, e in status["stages"].items() if e.get("skipped")] == sorted(BEFORE)

    # The same outputs as the uninterrupted run: embeddings, retrieval, metrics.
    def emb(run_dir):
        t = read_table(run_dir / "student_emb").sort_by("id")
        return t.column("id").to_pylist(), np.stack(t.column("embedding").to_numpy(zero_copy_only=False))

    ids_a, e_a = emb(reference)
    ids_b, e_b = emb(faulty)
    tally.rows("method rerun after a kill: embedded passages", ids_a, ids_b)
    np.testing.assert_allclose(e_b, e_a, rtol=1e-5, atol=1e-6)

    def retrieved(run_dir):
        t = read_table(run_dir / "student_run")
        return dict(zip(zip(t.column("qid").to_pylist(), t.column("pid").to_pylist()), t.column("score").to_pylist()))

    got, want = retrieved(faulty), retrieved(reference)
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5, atol=1e-5)
    m_a = json.loads((reference / "student_eval" / "metrics.json").read_text())["metrics"]
    m_b = json.loads((faulty / "student_eval" / "metrics.json").read_text())["metrics"]
    assert m_b == pytest.approx(m_a, abs=1e-9)
    r = json.loads((faulty / "results-tiny.json").read_text())
    assert r["results"]["student"]["metrics"] == m_b
