"""Training faults: a worker killed, then the whole driver (kill -9 of `densekit train`), then the
same command again; and a checkpoint that fails half-written. Each run must end exactly as an
uninterrupted one: the same steps, the same data (digest of every query seen, in order), the same
weights. No half-written checkpoint is ever resumed from.

(tests/train/test_train.py proves a killed worker alone; here it is followed by a killed driver.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from densekit.artifacts import TableWriter, read_manifest, write_manifest
from densekit.config import TrainConfig, load_config
from densekit.data import records as R

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long]

WORDS = [f"w{i}" for i in range(64)]
STATE_FILE = "trainer_state.json"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """32 queries, each sharing words with its positive, 3 random negatives; a tiny student."""
    from densekit.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("train-faults")
    rng = random.Random(0)
    docs = {f"d{i}": " ".join(rng.sample(WORDS, 6)) for i in range(64)}
    pids = list(docs)
    cols = {R.QID: [], R.QUERY: [], R.POSITIVES: [], R.NEGATIVES: []}
    for i in range(32):
        pid = pids[i]
        cols[R.QID].append(f"q{i}")
        cols[R.QUERY].append(" ".join(rng.sample(docs[pid].split(), 3)))
        cols[R.POSITIVES].append([R.passage(pid, docs[pid])])
        cols[R.NEGATIVES].append([R.passage(p, docs[p]) for p in rng.sample([p for p in pids if p != pid], 3)])
    with TableWriter(root / "groups", R.GROUPS_SCHEMA) as w:
        w.write(cols)
    write_manifest(root / "groups", "test")
    student = build_tiny_model(root / "student", [" ".join(WORDS)] * 4, layers=2, hidden=32, seed=0)
    return root / "groups", student


def overrides(task, out: Path, *extra: str) -> list[str]:
    groups, student = task
    return [f"model.path={student}", "model.pooling=mean", "model.dropout=0.0", f"data.train={groups}",
            "data.group_size=2", "losses.contrastive.weight=1.0", "losses.contrastive.params.temperature=0.1",
            "optim.lr=5e-3", "optim.batch_size=8", "optim.max_steps=9", "optim.warmup_steps=2",
            "checkpoint_every=3", "resources.num_workers=1", "resources.cpus_per_worker=1",
            f"output={out}", *extra]


def _ray_up() -> None:
    """The local Ray tests/conftest.py's ray_session starts (that fixture is per test; the
    reference run below is per module)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=1_000_000_000,
                 logging_level="WARNING")


@pytest.fixture(scope="module")
def reference(task, tmp_path_factory):
    """The same run, uninterrupted (in-process)."""
    from densekit.train import train

    _ray_up()
    out = tmp_path_factory.mktemp("clean") / "run"
    train(load_config(TrainConfig, None, overrides(task, out)))
    return out


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(out: Path, ref: Path) -> None:
    """Same steps, same data in the same order, same losses, same final weights."""
    import torch

    from densekit.models import load_model

    read_manifest(out)
    s, r = summary(out), summary(ref)
    assert (s["step"], s["queries_seen"]) == (r["step"], r["queries_seen"]) == (9, 9 * 8)
    assert s["data_digest"] == r["data_digest"]
    h, hr = history(out), history(ref)
    assert [m["step"] for m in h] == [m["step"] for m in hr] == [3, 6, 9]
    for a, b in zip(h, hr):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w, wr = load_model(out / "model").state_dict(), load_model(ref / "model").state_dict()
    for k in wr:
        torch.testing.assert_close(w[k], wr[k], atol=1e-6, rtol=1e-5)


def registered_step(out: Path) -> int | None:
    """The step of the latest checkpoint Ray Train has registered (its run snapshot)."""
    try:
        snap = json.loads((out / "checkpoints" / "checkpoint_manager_snapshot.json").read_text())
        return snap["latest_checkpoint_result"]["metrics"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoints(out: Path) -> dict[Path, int | None]:
    """Each checkpoint directory in storage -> the step its state file records (None: no state)."""
    found = {}
    for d in sorted(p for p in (out / "checkpoints").glob("checkpoint_*") if p.is_dir()):
        state = d / STATE_FILE
        found[d] = json.loads(state.read_text())["step"] if state.is_file() else None
    return found


# --- a worker, then the driver, killed; the same command again -------------------------------------


def test_worker_then_driver_killed_resumes_and_ends_as_uninterrupted(task, reference, tmp_path, tally, fault_plan):
    import ray

    _ray_up()
    out = tmp_path / "run"
    # The driver is a process of its own, attached to the test's Ray as a job (like `ray job
    # submit`): killing it kills the job's actors (Train controller, workers), not the cluster.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    # The workers belong to the test's Ray, whose processes read the fault plan (tests/conftest.py).
    fault_plan(kill_after_step=4, delay_s=5, hang_after_step=7, marker=str(tmp_path / "worker-killed"))
    cmd = [sys.executable, "-m", "densekit.cli", "train", *overrides(task, out, "max_failures=2")]
    log = tmp_path / "first.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # The worker is killed 5 s after step 4 and resumes from the checkpoint of step 3; it
            # stops after step 7, and once Ray Train has registered the checkpoint of step 6 (it
            # polls workers every 2 s), the driver is killed.
            deadline = time.time() + 900
            while time.time() < deadline and proc.poll() is None:
                if (tmp_path / "worker-killed.hang").exists() and registered_step(out) == 6:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, "the run ended before the driver could be killed:\n" + log.read_text()[-3000:]
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert (tmp_path / "worker-killed").exists()
    assert "resumed at step 3" in text, "the restarted worker did not resume:\n" + text[-3000:]
    tally.fault("train: worker process killed after step 4")
    tally.fault("train: driver killed (SIGKILL) after step 7, last checkpoint at step 6")
    assert not (out / "_manifest.json").exists()
    steps = checkpoints(out)
    assert 6 in steps.values() and 9 not in steps.values()
    # A checkpoint left half-written in storage (as by a crash while Ray copies it): never used.
    stray = out / "checkpoints" / "checkpoint_9999-12-31_23-59-59.999999"
    shutil.copytree(next(d for d, s in steps.items() if s == 6) / "model", stray / "model")

    fault_plan()  # no more faults
    rerun = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    text = rerun.stdout.decode(errors="replace")
    assert rerun.returncode == 0, text[-3000:]
    assert "resumed at step 6" in text, text[-3000:]
    assert_same_run(out, reference)


# --- a checkpoint that fails half-written ----------------------------------------------------------


def test_checkpoint_failing_half_written_keeps_the_previous_one(task, reference, tmp_path, fault_plan, tally):
    """The disk fills while step 6's checkpoint is written: the worker fails, Ray Train restarts it
    from step 3's checkpoint (untouched), and the run ends as the uninterrupted one."""
    from densekit.train import train

    _ray_up()
    marker = tmp_path / "fault-fired"
    fault_plan(fail_checkpoint_at_step=6, marker=str(marker))
    out = tmp_path / "run"
    train(load_config(TrainConfig, None, overrides(task, out, "max_failures=1", "keep_checkpoints=5")))
    assert marker.read_text().startswith("checkpoint_write: rank 0, step 6")
    tally.fault("train: checkpoint write failed half-way (disk full)")
    steps = checkpoints(out)
    assert None not in steps.values(), f"a checkpoint without its state file: {steps}"
    # Resumed from step 3's checkpoint: a restart from scratch would have saved step 3 twice.
    assert sorted(steps.values()) == [3, 6, 9]
    assert_same_run(out, reference)
