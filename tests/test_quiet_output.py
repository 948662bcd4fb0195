"""Quiet output: steps run as the `densekit` command on a tiny world (encode with Ray Data model actors
and Hugging Face loading, index with FAISS tasks) print densekit's own lines only;
no Ray or Hugging Face logger line, progress block or bar, worker prefix, traceback or crash dump.
`-v` brings Ray's lines back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from densekit.cli import main

# What must not appear by default: Ray's Python log format ("2026-01-01 10:00:00,123\tINFO x.py:12 --"),
# Ray's C++ log format ("[2026-01-01 10:00:00,123 E 123 456] core_worker.cc:"), Ray Data's progress
# blocks, worker output prefixes ("(MapWorker(...) pid=123)"), tqdm bars, tracebacks, crash dumps.
RAY_PY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR)\s+\S+\.py:\d+ --", re.M)
RAY_CPP = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]", re.M)
FORBIDDEN = [
    "logging_progress", "streaming_executor", "pid=", "Loading weights", "it/s]", "Traceback",
    "Fatal Python error", "Segmentation fault", "SIGSEGV", "faiss.loader",
]  # fmt: skip
OWN = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) densekit[.:]")


def _densekit(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DENSEKIT_VERBOSE"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_VERBOSITY"):
        env.pop(k, None)  # the command must quieten them itself
    return subprocess.run(
        [sys.executable, "-m", "densekit.cli", *args], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=600,
    )


@pytest.mark.slow
@pytest.mark.ray
def test_steps_are_quiet_by_default_and_verbose_with_v(tmp_path, tiny_model_dir):
    task = tmp_path / "task"
    assert main(["generate", f"output={task}", "num_docs=60", "num_train_queries=20", "num_dev_queries=20",
                 "num_topics=3", "num_concepts=40", "seed=0"]) == 0
    method = tmp_path / "quiet.yaml"
    method.write_text(f"""
name: quiet
output: {tmp_path / "run"}
stages:
  corpus:
    step: encode
    set: {{model: {tiny_model_dir}, input: {task / "corpus"}, rows_per_shard: 25, resources: {{num_workers: 1}}}}
  index:
    step: index
    set: {{embeddings: "@corpus"}}
""")
    quiet = _densekit(["run", str(method)], tmp_path)
    out = quiet.stdout + quiet.stderr
    assert quiet.returncode == 0, out[-4000:]
    assert (tmp_path / "run" / "index" / "shards").is_dir()
    assert not RAY_PY.search(out), RAY_PY.search(out).group(0)
    assert not RAY_CPP.search(out), RAY_CPP.search(out).group(0)
    for word in FORBIDDEN:
        assert word not in out, f"{word!r} in the output of a quiet run:\n{out[-4000:]}"
    lines = [x for x in quiet.stderr.splitlines() if x.strip()]
    strangers = [x for x in lines if not OWN.match(x)]
    assert not strangers, "lines that densekit did not log:\n" + "\n".join(strangers[:20])
    assert any("encode passages: done" in x for x in lines) and any("index shards: done" in x for x in lines)

    # -v: Ray's own lines (its logger: "Started a local Ray instance", ...) are back.
    loud = _densekit(["-v", "index", f"embeddings={tmp_path / 'run' / 'corpus'}", f"output={tmp_path / 'loud'}"],
                     tmp_path)
    out = loud.stdout + loud.stderr
    assert loud.returncode == 0, out[-4000:]
    assert RAY_PY.search(out), out[-4000:]
