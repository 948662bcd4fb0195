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


def test_progress_is_log_lines_off_a_terminal_and_a_bar_on_one(caplog, capsys, monkeypatch):
    import logging

    from densekit.logs import Progress

    log = logging.getLogger("densekit.test_progress")
    monkeypatch.setenv("DENSEKIT_PROGRESS", "log")  # as in a log file, CI or a Ray job
    with caplog.at_level(logging.INFO, logger=log.name):
        p = Progress(log, "work", total=10, unit="rows", every=0.0)
        assert p.bar is None
        p.update(4)
        p.update(6)
        p.done()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("work: 4/10 rows (40.0%") and msgs[-1].startswith("work: done, 10/10 rows")
    caplog.clear()
    monkeypatch.setenv("DENSEKIT_PROGRESS", "bar")  # a terminal: a live bar, then the final line only
    with caplog.at_level(logging.INFO, logger=log.name):
        p = Progress(log, "work", total=10, unit="rows", every=0.0)
        assert p.bar is not None
        p.update(10)
        p.done()
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("work: done, 10/10 rows")
    assert "work" in capsys.readouterr().err


def test_verbose_flag_anywhere(capsys):
    assert main(["-v", "generate", "--help"]) == 0
    assert "usage: densekit generate" in capsys.readouterr().out
    assert main(["generate", "--help", "--verbose"]) == 0
    assert "usage: densekit generate" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "-v, --verbose" in capsys.readouterr().out


def test_worker_runtime_env_leaves_a_jobs_own_keys_alone(monkeypatch):
    import json

    from densekit.raycluster import SETUP_HOOK, worker_runtime_env

    monkeypatch.setenv("DENSEKIT_VERBOSE", "0")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    env = worker_runtime_env()
    assert env["worker_process_setup_hook"] == SETUP_HOOK
    assert env["env_vars"]["DENSEKIT_VERBOSE"] == "0" and "HF_HUB_DISABLE_PROGRESS_BARS" in env["env_vars"]
    # Under `ray job submit`: Ray refuses to merge a key both set, so the job's own keys win.
    job = {"runtime_env": {"env_vars": {"HF_HUB_DISABLE_PROGRESS_BARS": "0"}, "worker_process_setup_hook": "x.y"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    env = worker_runtime_env()
    assert "worker_process_setup_hook" not in env and "HF_HUB_DISABLE_PROGRESS_BARS" not in env["env_vars"]
    monkeypatch.setenv("DENSEKIT_VERBOSE", "1")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(k, raising=False)
    # OpenMP threads that sleep while they wait (docs/cluster.md), unless the user chose a policy.
    assert worker_runtime_env()["env_vars"] == {"DENSEKIT_VERBOSE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert worker_runtime_env()["env_vars"] == {"DENSEKIT_VERBOSE": "1"}


def test_quiet_driver_prints_densekit_lines_of_workers_and_says_a_crash(monkeypatch, capsys, caplog):
    import logging

    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from densekit import raycluster

    monkeypatch.setattr(ray_worker.global_worker, "mode", ray_worker.SCRIPT_MODE)
    monkeypatch.setattr(dispatcher, "handlers", list(dispatcher.handlers))  # restored afterwards
    raycluster._quiet_worker_output()
    with caplog.at_level(logging.WARNING, logger="densekit.raycluster"):
        dispatcher.emit({"pid": 123, "task_name": "_build_shard", "is_err": True, "lines": [
            "\x1b[36m04:00:00 INFO densekit.pipelines.index: shard 1 built\x1b[0m",
            "2026-01-01 04:00:00,000\tINFO streaming_executor.py:215 -- Starting execution",
            "Loading weights: 100%|##########| 39/39",
            "Fatal Python error: Segmentation fault",
        ]})
    assert capsys.readouterr().err == "04:00:00 INFO densekit.pipelines.index: shard 1 built\n"
    [crash] = [r.getMessage() for r in caplog.records]
    assert "crashed (_build_shard, pid 123): Fatal Python error: Segmentation fault" in crash and "-v" in crash
