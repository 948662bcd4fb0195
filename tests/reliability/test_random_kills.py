"""Kills from outside: `densekit <step>` and `densekit run <method>` started as a subprocess on a tiny
generated world, its process group SIGKILLed at a random moment while it works (seeded and logged:
DKTEST_KILL_SEED=<seed> replays a draw), then the same command rerun to completion. The result must
equal an uninterrupted run: every row exactly once (the tally's row checks), embeddings and scores
equal within float tolerance, retrieval and metrics equal, training the same steps, data and weights.

The killed commands join the test's local Ray (RAY_ADDRESS), as a driver submitted to a cluster
does: killing the driver ends its job (actors, tasks, Train workers), not the cluster.

Also here: Ctrl-C (SIGINT) and SIGTERM stop a step or a method run at once, shut down the Ray it
started, exit 130 / 143 with one line and no traceback.
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

import numpy as np
import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, is_complete, read_table, write_manifest
from densekit.cli import STEPS
from densekit.config import load_config
from densekit.data import records as R

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


# --- a tiny world ---------------------------------------------------------------------------------


def run_step(step: str, *overrides: str) -> None:
    """A step in-process (the reference runs: they use the test's Ray)."""
    STEPS[step].function()(load_config(STEPS[step].config_cls(), None, list(overrides)))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A generated corpus and queries, training groups over them, a tiny student and teacher."""
    import torch

    from densekit.models import build_model
    from densekit.models.spec import ModelSpec

    root = tmp_path_factory.mktemp("kill-world")
    run_step("generate", f"output={root / 'task'}", "seed=0", "num_docs=1200", "num_train_queries=200",
             "num_dev_queries=40", "num_topics=10", "num_concepts=400", "doc_length=30", "query_length=6")
    corpus = read_table(root / "task" / "corpus").to_pydict()
    queries = read_table(root / "task" / "queries").to_pydict()
    docs = dict(zip(corpus[R.PID], corpus[R.TEXT]))
    pids = list(docs)
    rng = random.Random(0)
    cols = {R.QID: [], R.QUERY: [], R.POSITIVES: [], R.NEGATIVES: []}
    for i, (qid, text) in enumerate(zip(queries[R.QID][:160], queries[R.TEXT][:160])):
        pos = pids[i % len(pids)]
        cols[R.QID].append(qid)
        cols[R.QUERY].append(text)
        cols[R.POSITIVES].append([R.passage(pos, docs[pos])])
        cols[R.NEGATIVES].append([R.passage(p, docs[p]) for p in rng.sample([p for p in pids if p != pos], 3)])
    with TableWriter(root / "groups", R.GROUPS_SCHEMA, rows_per_part=40) as w:
        w.write(pa.table(cols, schema=R.GROUPS_SCHEMA))
    write_manifest(root / "groups", "test")
    torch.manual_seed(0)
    teacher = build_model(ModelSpec(kind="cross_encoder"), tiny_model_dir).save(root / "ce")
    return {"root": root, "task": root / "task", "corpus": root / "task" / "corpus", "groups": root / "groups",
            "model": tiny_model_dir, "teacher": teacher}


# --- killing a command at a random moment ----------------------------------------------------------


def env_for(address: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DKTEST_FAULT_PLAN": ""}  # no injected fault
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), env.get("PYTHONPATH", "")])
    if address:
        env["RAY_ADDRESS"] = address
    return env


def densekit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "densekit.cli", *args]


def ray_address() -> str:
    """The test's local Ray (the `ray_session` fixture started it)."""
    import ray

    return ray.get_runtime_context().gcs_address


def kill_rng(what: str) -> tuple[int, random.Random]:
    """A fresh seed per run (DKTEST_KILL_SEED=<seed> replays one), printed and put in the tally."""
    seed = int(os.environ.get("DKTEST_KILL_SEED") or random.SystemRandom().randrange(2**31))
    print(f"{what}: kill seed {seed}", flush=True)
    return seed, random.Random(seed)


def run_and_kill_at_random(cmd: list[str], log: Path, started, window_s: float, rng: random.Random,
                           env: dict[str, str], out: Path, tries: int = 3) -> float:
    """Start `cmd` in a process group of its own; once `started()` is true, wait a random time in
    [0, window_s) and SIGKILL the group. When the command ends first (a slow draw on a fast
    machine), its output is removed and it is tried again with half the window. Returns the delay."""
    for _attempt in range(tries):
        delay = rng.uniform(0.0, window_s)
        print(f"SIGKILL {delay:.2f} s after the start condition of {' '.join(cmd[2:4])}", flush=True)
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.time() + 600
                while proc.poll() is None and not started() and time.time() < deadline:
                    time.sleep(0.02)
                if proc.poll() is None:
                    time.sleep(delay)
            finally:
                killed = proc.poll() is None
                if killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
        if killed and not is_complete(out):
            assert proc.returncode == -signal.SIGKILL
            return delay
        # Ended (or had written its complete output) before the kill.
        assert proc.returncode in (0, -signal.SIGKILL), f"failed before the kill:\n{log.read_text()[-3000:]}"
        shutil.rmtree(out)
        window_s /= 2
    pytest.fail(f"the command always ended before the kill ({tries} tries)")


def rerun(cmd: list[str], env: dict[str, str]) -> str:
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    text = r.stdout.decode(errors="replace")
    assert r.returncode == 0, text[-3000:]
    return text


def parts(out: Path) -> int:
    return len(list(out.glob("part-*.parquet")))


def embeddings(out: Path) -> tuple[list[str], np.ndarray]:
    t = read_table(out).sort_by("id")
    return t.column("id").to_pylist(), np.stack(t.column("embedding").to_numpy(zero_copy_only=False))


# --- encode ----------------------------------------------------------------------------------------


def test_encode_killed_at_a_random_moment_resumes_to_the_same_embeddings(world, ray_session, tmp_path, tally):
    """Killed after a random number (1-16) of its 24 shards, and a random fraction of a second more."""
    from densekit.pipelines.encode import encode_texts

    address = ray_address()
    out = tmp_path / "emb"
    cmd = densekit_cmd("encode", f"model={world['model']}", f"input={world['corpus']}", "rows_per_shard=50",
                       "batch_size=8", "block_rows=50", f"output={out}")
    seed, rng = kill_rng("encode")
    k = rng.randint(1, 16)
    delay = run_and_kill_at_random(cmd, tmp_path / "killed.log", lambda: parts(out) >= k, 0.3, rng,
                                   env_for(address), out)
    done = parts(out)
    tally.fault(f"encode: process group SIGKILLed at a random moment (seed {seed}: {delay:.2f} s after "
                f"shard {k}; {done}/24 shards written)")
    assert not is_complete(out)
    text = rerun(cmd, env_for(address))
    assert f"24 shards, {done} complete, {24 - done} to encode" in text, text[-2000:]
    # The same vectors as the model gives in-process, uninterrupted.
    corpus = read_table(world["corpus"]).to_pydict()
    want = encode_texts(world["model"], corpus[R.TEXT], titles=corpus[R.TITLE])
    ids, got = embeddings(out)
    tally.rows("encode killed at random and rerun: passages", corpus[R.PID], ids)
    order = {pid: i for i, pid in enumerate(corpus[R.PID])}
    np.testing.assert_allclose(got, want[[order[i] for i in ids]], rtol=1e-5, atol=1e-6)


# --- score -----------------------------------------------------------------------------------------


def scores(out: Path) -> tuple[list[str], dict]:
    t = read_table(out).to_pydict()
    got = {}
    for qid, pos, neg in zip(t[R.QID], t[R.POSITIVES], t[R.NEGATIVES]):
        for p in pos + neg:
            got[(qid, p[R.PID])] = p[R.SCORE]
    return t[R.QID], got


def test_score_killed_at_a_random_moment_reruns_to_the_same_scores(world, ray_session, tmp_path, tally):
    """Killed at a random moment after it connected to Ray (starting its actors, or scoring)."""
    from densekit.pipelines.score import TeacherScorer

    address = ray_address()
    out = tmp_path / "scored"
    cmd = densekit_cmd("score", f"groups={world['groups']}", f"teachers=[{{model: '{world['teacher']}'}}]",
                       "batch_size=4", f"output={out}")
    log = tmp_path / "killed.log"
    seed, rng = kill_rng("score")
    delay = run_and_kill_at_random(cmd, log, lambda: "Ray: " in log.read_text(errors="replace"), 12.0, rng,
                                   env_for(address), out)
    tally.fault(f"score: process group SIGKILLed at a random moment (seed {seed}: {delay:.2f} s after "
                "it joined Ray)")
    assert not is_complete(out)
    rerun(cmd, env_for(address))
    groups = read_table(world["groups"]).to_pydict()
    passages = [pos + neg for pos, neg in zip(groups[R.POSITIVES], groups[R.NEGATIVES])]
    ref = TeacherScorer(str(world["teacher"])).score(groups[R.QUERY], passages)
    want = {(q, p[R.PID]): float(x) for q, ps, xs in zip(groups[R.QID], passages, ref) for p, x in zip(ps, xs)}
    qids, got = scores(out)
    tally.rows("score killed at random and rerun: training groups", groups[R.QID], qids)
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5, atol=1e-6)


# --- train -----------------------------------------------------------------------------------------


def train_overrides(world, out: Path) -> list[str]:
    return [f"model.path={world['model']}", "model.pooling=mean", "model.dropout=0.0",
            f"data.train={world['groups']}", "data.group_size=2", "losses.contrastive.weight=1.0",
            "optim.lr=1e-3", "optim.batch_size=8", "optim.max_steps=16", "optim.warmup_steps=2",
            "checkpoint_every=4", "resources.num_workers=1", "resources.cpus_per_worker=1", f"output={out}"]


@pytest.mark.long
def test_train_killed_at_a_random_moment_resumes_as_uninterrupted(world, ray_session, tmp_path, tally):
    """Killed a random time (< 3 s) after a random number (0-3) of its 4 checkpoints."""
    import torch

    from densekit.models import load_model

    address = ray_address()
    ref = tmp_path / "ref"
    run_step("train", *train_overrides(world, ref))
    out = tmp_path / "run"
    cmd = densekit_cmd("train", *train_overrides(world, out))
    seed, rng = kill_rng("train")
    k = rng.randint(0, 3)

    def started() -> bool:
        return (out / "checkpoints").is_dir() and len(list((out / "checkpoints").glob("checkpoint_*"))) >= k

    delay = run_and_kill_at_random(cmd, tmp_path / "killed.log", started, 3.0, rng, env_for(address), out)
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("checkpoint_*"))
    tally.fault(f"train: process group SIGKILLed at a random moment (seed {seed}: {delay:.2f} s after "
                f"checkpoint {k}; {len(ckpts)} checkpoint(s) saved)")
    assert not (out / "manifest.json").exists()
    rerun(cmd, env_for(address))
    s, r = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    assert (s["step"], s["queries_seen"], s["data_digest"]) == (r["step"], r["queries_seen"], r["data_digest"])
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    hist_ref = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in hist] == [m["step"] for m in hist_ref] == [4, 8, 12, 16]
    for a, b in zip(hist, hist_ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w, wr = load_model(out / "model").state_dict(), load_model(ref / "model").state_dict()
    for k in wr:
        torch.testing.assert_close(w[k], wr[k], atol=1e-6, rtol=1e-5)


# --- a method run ----------------------------------------------------------------------------------

METHOD = """
name: tiny
output: {output}
report: false
stages:
  task:
    step: generate
    set: {{seed: 0, num_docs: 600, num_train_queries: 100, num_dev_queries: 40, num_topics: 10,
          num_concepts: 300, concepts_per_doc: 8, concepts_per_query: 4, query_length: 8}}
  emb: {{step: encode, set: {{model: "{model}", input: "@task/corpus", rows_per_shard: 100, batch_size: 16}}}}
  index: {{step: index, set: {{embeddings: "@emb"}}}}
  dev_run: {{step: search, set: {{index: "@index", queries: "@task/queries", model: "{model}", k: 20}}}}
  dev_eval: {{step: evaluate, set: {{run: "@dev_run", qrels: "@task/qrels/dev", metrics: [mrr@10, ndcg@10]}}}}
results:
  dev: "@dev_eval"
"""
STAGES = ["task", "emb", "index", "dev_run", "dev_eval"]


def write_method(path: Path, output: Path, model: Path) -> Path:
    path.write_text(METHOD.format(output=output, model=model))
    return path


def run_table(run_dir: Path) -> dict:
    t = read_table(run_dir)
    return dict(zip(zip(t.column("qid").to_pylist(), t.column("pid").to_pylist()), t.column("score").to_pylist()))


@pytest.mark.long
def test_method_run_killed_at_a_random_moment_resumes_to_the_same_results(world, ray_session, tmp_path, tally):
    """Killed a random time (< 3 s) after a randomly chosen stage started."""
    address = ray_address()
    # Two run folders whose paths have the same length (paths are part of every stage's config).
    ref, out = tmp_path / "ref" / "run", tmp_path / "bad" / "run"
    rerun(densekit_cmd("run", str(write_method(tmp_path / "ref.yaml", ref, world["model"]))), env_for(address))
    cmd = densekit_cmd("run", str(write_method(tmp_path / "bad.yaml", out, world["model"])))
    seed, rng = kill_rng("method run")
    stage = rng.choice(STAGES[:-1])
    delay = run_and_kill_at_random(cmd, tmp_path / "killed.log", lambda: (out / stage).exists(), 3.0, rng,
                                   env_for(address), out)
    done = [s for s in STAGES if is_complete(out / s)]
    tally.fault(f"method run: process group SIGKILLed at a random moment (seed {seed}: {delay:.2f} s after "
                f"stage {stage} started; complete: {', '.join(done) or 'none'})")
    text = rerun(cmd, env_for(address))
    for s in done:
        line = next(x for x in text.splitlines() if f"] {s} (" in x)
        assert "complete, skipping" in line, line
    ids_a, e_a = embeddings(ref / "emb")
    ids_b, e_b = embeddings(out / "emb")
    tally.rows("method run killed at random and rerun: embedded passages", ids_a, ids_b)
    np.testing.assert_allclose(e_b, e_a, rtol=1e-5, atol=1e-6)
    got, want = run_table(out / "dev_run"), run_table(ref / "dev_run")
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5, atol=1e-5)
    m_a = json.loads((ref / "dev_eval" / "metrics.json").read_text())["metrics"]
    m_b = json.loads((out / "dev_eval" / "metrics.json").read_text())["metrics"]
    assert m_b == pytest.approx(m_a, abs=1e-9)


# --- Ctrl-C and SIGTERM ----------------------------------------------------------------------------


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _started_ray(log: Path) -> bool:
    return log.exists() and b" node(s), " in log.read_bytes()  # raycluster's "Ray: N node(s), ..."


@pytest.mark.parametrize("moment", ["encode_planned", "ray_up"])
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_method_run_at_once_without_a_traceback(sig, code, moment, world, tmp_path, tally):
    """The run starts its own local Ray (RAY_ADDRESS=local); the signal goes to its process group,
    as a terminal's Ctrl-C does; it must end within seconds and leave no Ray process behind. Two
    moments: as the encode stage has planned its shards (the run is importing and starting Ray: a
    signal there once went unnoticed, "Exception ignored in ..." inside `import ray`) and once Ray
    is up (its own processes get the signal too)."""
    import psutil

    out = tmp_path / "run"
    cmd = densekit_cmd("run", str(write_method(tmp_path / "m.yaml", out, world["model"])))
    env = env_for("local")
    log = tmp_path / "run.log"
    with open(log, "wb") as f:
        # A terminal's foreground job has Ctrl-C at its default; a test run started in the background
        # (`pytest &`, nohup) ignores SIGINT, and its children inherit that, so reset it as a shell does.
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_sigint_default)
        try:
            deadline = time.time() + 600
            # Stop it while it works: the encode stage has planned its shards (and, for "ray_up", Ray is up).
            while proc.poll() is None and not (out / "emb" / "_plan.json").exists() and time.time() < deadline:
                time.sleep(0.05)
            while moment == "ray_up" and proc.poll() is None and not _started_ray(log) and time.time() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, log.read_text()[-3000:]
            children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            os.killpg(proc.pid, sig)
            t0 = time.time()
            proc.wait(timeout=60)
            took = time.time() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    tally.fault(f"method run: {sig.name} while encoding ({moment.replace('_', ' ')})")
    assert proc.returncode == code, text[-3000:]
    assert took < 30, f"took {took:.0f} s to stop"
    assert "Traceback" not in text, text[-3000:]
    name = "interrupted (SIGINT)" if sig == signal.SIGINT else "terminated (SIGTERM)"
    stopped = [x for x in text.splitlines() if name in x]
    assert len(stopped) == 1 and "stopped; rerun the same command to resume" in stopped[0], text[-3000:]
    # Its Ray processes are gone (give the raylet's reaper a few seconds).
    deadline = time.time() + 20
    while time.time() < deadline and any(psutil.pid_exists(p) for p in children):
        time.sleep(0.5)
    left = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left running: {left}"
