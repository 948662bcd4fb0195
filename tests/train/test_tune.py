"""`densekit tune`: search keys checked before any trial; a 3-trial search (interrupted, then
resumed) whose best config `densekit train` accepts and whose best model really scores best; (long)
the same search never interrupted gives the same trials."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from densekit.config import TrainConfig, TuneConfig, load_config
from densekit.errors import ConfigError


def write_base(path: Path, task, student) -> Path:
    """A small train config on the memorisable task (absolute paths), evaluated every 8 steps."""
    base = {
        "model": {"path": str(student), "pooling": "mean", "dropout": 0.0},
        "data": {"train": str(task["groups"]), "group_size": 2},
        "losses": {"contrastive": {"weight": 1.0, "params": {"temperature": 0.1}}},
        "optim": {"lr": 1.0e-3, "batch_size": 8, "max_steps": 24, "warmup_steps": 2},
        "eval": {
            "every": 8,
            "queries": str(task["queries"]),
            "qrels": str(task["qrels"]),
            "corpus": str(task["corpus"]),
        },
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "output": "???",
    }
    path.write_text(yaml.safe_dump(base))
    return path


def tune_config(base: Path, out: Path, *extra: str) -> TuneConfig:
    return load_config(
        TuneConfig,
        None,
        [
            f"base={base}",
            f"output={out}",
            # Grid: exactly one trial per learning rate, run in this order; the temperature is sampled.
            "space={optim.lr: {grid: [5.0e-3, 1.0e-5, 2.0e-3]}, losses.contrastive.params.temperature: {uniform: [0.05, 0.1]}}",
            "num_trials=1",
            "metric=ndcg@10",
            "grace_period=2",  # ASHA's one rung: step 16 (2 evaluation rounds of 8 steps)
            "max_concurrent_trials=1",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    "space, message",
    [
        ("{optim.lrr: {loguniform: [1.0e-5, 1.0e-3]}}", "Did you mean 'lr'"),
        ("{losses.contrastive.params.temprature: {choice: [1, 2]}}", "Did you mean 'temperature'"),
        (
            "{optim.warmup_steps: {choice: [1, oops]}}",
            "space.optim.warmup_steps (choice, value 'oops')",
        ),
        ("{model.student_layers: {choice: [[0, 1], [0, x]]}}", "model.student_layers"),
        ("{eval.metric: {choice: [mrr@10]}}", "set per trial"),
    ],
)
def test_search_keys_are_checked_before_any_trial(
    tmp_path, train_task, student_dir, space, message
):
    from densekit.tune import tune

    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    out = tmp_path / "search"
    cfg = tune_config(base, out, f"space={space}")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tune(cfg)
    assert not out.exists(), "nothing may be written before the search space is valid"


def test_base_needs_periodic_evaluation(tmp_path, train_task, student_dir):
    from densekit.tune import tune

    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    with pytest.raises(ConfigError, match="eval.every"):
        tune(tune_config(base, tmp_path / "search", "overrides.eval.every=0"))


def test_grace_period_must_fit_in_the_run(tmp_path, train_task, student_dir):
    from densekit.tune import tune

    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    out = tmp_path / "search"
    with pytest.raises(
        ConfigError, match="grace_period=4 evaluation rounds of 8 steps exceed max_steps=24"
    ):
        tune(tune_config(base, out, "grace_period=4"))
    # A first rung at the last step stops nothing that has not finished: refused as well.
    with pytest.raises(ConfigError, match="3 evaluation rounds of 8 steps reach max_steps=24: ASHA would have no rung"):
        tune(tune_config(base, out, "grace_period=3"))
    assert not out.exists()


def test_share_teacher_needs_an_online_teacher(tmp_path, train_task, student_dir):
    from densekit.tune import tune

    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    out = tmp_path / "search"
    with pytest.raises(ConfigError, match="share_teacher=true: .* has no online teacher"):
        tune(tune_config(base, out, "share_teacher=true"))
    assert not out.exists()


def test_shared_teacher_trials_get_the_searchs_cache_folder_unless_the_base_names_one(tmp_path, train_task, student_dir):
    from densekit.tune import _with_teacher_cache

    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    out = tmp_path / "search"
    with_teacher = load_config(TrainConfig, base, [f"teacher.path={student_dir}", "output=x"])
    assert _with_teacher_cache(tune_config(base, out), with_teacher, out) == []
    shared = tune_config(base, out, "share_teacher=true")
    assert _with_teacher_cache(shared, with_teacher, out) == [f"teacher_cache={out / '_teacher_cache'}"]
    own = load_config(TrainConfig, base, [f"teacher.path={student_dir}", "teacher_cache=/elsewhere", "output=x"])
    assert _with_teacher_cache(shared, own, out) == []


def test_asha_never_stops_a_trial_at_its_last_step(tmp_path, train_task, student_dir):
    """Rungs of 8 steps, grace 1, factor 3, 24 steps: ASHA's rungs fall at 8 and 24. A trial that
    trails at step 24 has finished: stopping it there only cut its export. It still stops a
    trailing trial at step 8."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from densekit.tune import asha_scheduler

    cfg = tune_config(write_base(tmp_path / "base.yaml", train_task, student_dir), tmp_path / "out", "grace_period=1", "reduction_factor=3")
    asha = asha_scheduler(cfg, rung=8, max_steps=24)
    asha.set_search_properties("ndcg@10", "max")
    a, b, c = (SimpleNamespace(trial_id=i, config={}) for i in "abc")
    for t in (a, b, c):
        asha.on_trial_add(None, t)
    act = lambda t, step, v: asha.on_trial_result(None, t, {"step": step, "ndcg@10": v})  # noqa: E731
    assert act(a, 8, 0.5) == act(b, 8, 0.6) == TrialScheduler.CONTINUE
    assert act(c, 8, 0.1) == TrialScheduler.STOP, "a trailing trial is still stopped at a rung"
    assert act(a, 24, 0.9) == TrialScheduler.CONTINUE
    assert act(b, 24, 0.1) == TrialScheduler.CONTINUE, "a trial was stopped at its last step"


def test_space_syntax_is_checked_when_loading():
    with pytest.raises(ConfigError, match="Did you mean 'loguniform'"):
        load_config(
            TuneConfig, None, ["base=b.yaml", "output=o", "space={optim.lr: {logunifrom: [1, 2]}}"]
        )
    with pytest.raises(ConfigError, match=r"low < high"):
        load_config(
            TuneConfig, None, ["base=b.yaml", "output=o", "space={optim.lr: {uniform: [2, 1]}}"]
        )
    both = load_config(
        TuneConfig,
        None,
        [
            "base=b.yaml",
            "output=o",
            "space={a: {choice: [1]}}",
            "overrides={optim.lr: 1.0e-4}",
            "overrides.model.path=/m x",
        ],
    )  # a YAML mapping and command-line keys merge
    assert both.override_list() == ["optim.lr=0.0001", 'model.path="/m x"']
    nested = load_config(
        TuneConfig, None, ["base=b.yaml", "output=o", "space={optim: {lr: {choice: [1, 2]}}}"]
    )
    assert nested.search_space() == {"optim.lr": ("choice", [1, 2])}


@pytest.mark.ray
@pytest.mark.slow
def test_search_resumes_and_returns_the_best_config(
    tmp_path, train_task, student_dir, ray_session, monkeypatch
):
    _search_interrupted_then_resumed(tmp_path, train_task, student_dir, monkeypatch)


def _search_interrupted_then_resumed(tmp_path, train_task, student_dir, monkeypatch):
    """A 3-trial search, Ctrl-C'd after 2 trials, then resumed; checked. Returns its trial rows
    and manifest."""
    from ray.tune import Callback

    from densekit.artifacts import read_manifest
    from densekit.models import load_model
    from densekit.train_step import evaluate_model
    from densekit.tune import search, tune

    marker = tmp_path / "interrupted"

    class InterruptAfterFirstTrial(Callback):
        """Ctrl-C once two trials have ended. Ray Tune takes SIGINT itself while it runs, saves the
        search and returns from fit as if it were done, the third trial never started: densekit
        must see a stop there, not a finished search. Once only: Tune keeps its callbacks in the
        state it restores."""

        def on_step_begin(self, iteration, trials, **info):
            if not marker.exists() and sum(t.status == "TERMINATED" for t in trials) >= 2:
                marker.touch()
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # Tune saves its state at every step
    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    out = tmp_path / "search"
    cfg = tune_config(base, out, "report=true")
    # Ctrl-C at its default, as in a terminal (a test run started with nohup or `&` ignores it).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            search(cfg, callbacks=[InterruptAfterFirstTrial()])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert marker.exists()
    for written in ("_manifest.json", "trials.jsonl", "best_config.yaml", "best"):
        assert not (out / written).exists(), f"a stopped search wrote {written}"
    trials = sorted((out / "trials").iterdir())
    assert len(trials) == 2 and (trials[0] / "_manifest.json").exists(), "trial 1 finished"
    assert not (trials[1] / "_manifest.json").exists(), "ASHA stopped trial 2 before its export"
    first_manifest = (trials[0] / "_manifest.json").read_text()

    # The interrupted search can be reported before it resumes: each trial from its own folder.
    from densekit.report import report_run

    so_far = report_run(out).search
    assert "has not finished" in (out / "report.md").read_text()
    assert [t["status"] for t in so_far["trials"]] == ["finished", "unfinished"]
    ended = [json.loads(line) for line in (trials[0] / "metrics.jsonl").read_text().splitlines()]
    assert so_far["trials"][0]["history"] == [{"step": r["step"], "ndcg@10": r["ndcg@10"]} for r in ended if "ndcg@10" in r]
    # Trial 2's figures are its newest checkpoint's: at least the rung where ASHA stopped it (the stop
    # reaches a worker a little late), and what Tune itself recorded of it comes first, unchanged.
    stopped = so_far["trials"][1]
    assert stopped["steps"] >= 16
    recorded = [json.loads(line) for f in (out / "search").glob(f"*{trials[1].name}*/result.json")
                for line in f.read_text().splitlines()]
    recorded = [{"step": r["step"], "ndcg@10": r["ndcg@10"]} for r in recorded if "ndcg@10" in r]
    assert recorded and stopped["history"][: len(recorded)] == recorded
    assert so_far["trials"][1]["params"]["optim.lr"] == 1.0e-5

    tune(cfg)  # resumes: only the third trial runs
    assert "has not finished" not in (out / "report.md").read_text()
    manifest = read_manifest(out)
    assert len(json.loads((out / "report.json").read_text())["rows"]) >= 1  # report=true
    assert (trials[0] / "_manifest.json").read_text() == first_manifest, "a finished trial was rerun"
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["params"]["optim.lr"] for r in rows] == [5.0e-3, 1.0e-5, 2.0e-3]
    for r in rows:
        assert 0.05 <= r["params"]["losses.contrastive.params.temperature"] <= 0.1
        assert r["best"] == max(h["ndcg@10"] for h in r["history"])
    # lr 1e-5 barely moves the weights: at the rung (step 16) it is behind trial 1, and ASHA stops it.
    assert [r["status"] for r in rows] == ["finished", "stopped", "finished"], rows
    assert [r["steps"] for r in rows] == [24, 16, 24]
    assert rows[1]["history"][-1]["ndcg@10"] < next(
        h["ndcg@10"] for h in rows[0]["history"] if h["step"] == 16
    )
    best = max(rows, key=lambda r: r["best"])
    assert manifest["best_trial"] == best["trial_id"] and manifest["best"] == best["best"]
    assert manifest["trials"] == {"finished": 2, "stopped": 1, "error": 0}

    # best_config.yaml is a complete train config with the best trial's values.
    best_cfg = load_config(TrainConfig, out / "best_config.yaml")
    assert best_cfg.optim.lr == best["params"]["optim.lr"]
    assert (
        best_cfg.losses["contrastive"].params["temperature"]
        == best["params"]["losses.contrastive.params.temperature"]
    )
    assert best_cfg.eval.metric == "ndcg@10" and Path(best_cfg.output) == out / "retrain"

    # best/ really is the model that scored best: evaluated again here, independently of Tune.
    model = load_model(out / "best")
    model.eval()
    assert evaluate_model(model, best_cfg.eval, "cpu")["ndcg@10"] == pytest.approx(
        best["best"], abs=1e-6
    )

    # A finished search is not rerun.
    before = (out / "trials.jsonl").stat().st_mtime_ns
    tune(cfg)
    assert (out / "trials.jsonl").stat().st_mtime_ns == before

    # The report's search section names the same chosen trial, and records each trial's time.
    search_report = json.loads((out / "report.json").read_text())["search"]
    assert search_report["chosen"] == manifest["best_trial"]
    assert all(t["seconds"] and t["seconds"] > 0 for t in search_report["trials"])
    return rows, manifest


@pytest.mark.long
def test_an_interrupted_search_resumes_to_what_an_uninterrupted_one_gives(
    tmp_path, train_task, student_dir, ray_session, monkeypatch
):
    """The search above, interrupted and resumed, against the same search never interrupted with
    the same seed: the same trials (sampled temperatures included), the same best one."""
    rows, manifest = _search_interrupted_then_resumed(tmp_path, train_task, student_dir, monkeypatch)
    from densekit.artifacts import read_manifest
    from densekit.tune import tune

    base = tmp_path / "base.yaml"
    # The same search, never interrupted, with the same seed: the same trials, the same best one.
    whole = tmp_path / "whole"
    tune(tune_config(base, whole))
    whole_rows = [json.loads(line) for line in (whole / "trials.jsonl").read_text().splitlines()]
    assert [(r["params"], r["status"], r["steps"]) for r in whole_rows] == [
        (r["params"], r["status"], r["steps"]) for r in rows
    ]
    whole_best = read_manifest(whole)
    best = max(rows, key=lambda r: r["best"])
    assert whole_rows[[r["trial_id"] for r in whole_rows].index(whole_best["best_trial"])]["params"] == best["params"]
    assert whole_best["best"] == pytest.approx(manifest["best"], abs=1e-6)



@pytest.mark.long
def test_a_method_searches_then_retrains_the_chosen_config_longer(tmp_path, train_task, student_dir, ray_session):
    """A method file with a tune stage and a train stage whose config is the search's
    best_config.yaml (`config: "@search/best_config.yaml"`): one resumable command searches, then
    retrains the chosen config at full length; a second run skips both."""
    from densekit.artifacts import read_manifest
    from densekit.methods import run

    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({
        "name": "searched", "output": str(tmp_path / "run"),
        "stages": {
            "search": {"step": "tune", "set": {
                "base": str(base), "num_trials": 1, "metric": "ndcg@10", "scheduler": "none",
                "overrides": {"optim.max_steps": 16},
                "space": {"optim.lr": {"grid": [1.0e-5, 5.0e-3]}}}},
            "chosen": {"step": "train", "config": "@search/best_config.yaml", "set": {"optim.max_steps": 32}},
        },
    }, sort_keys=False))  # fmt: skip
    assert run([str(m)]) == 0
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "search" / "trials.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["best"])
    assert best["params"]["optim.lr"] == 5.0e-3 and all(r["steps"] == 16 for r in rows)
    chosen = load_config(TrainConfig, out / "chosen" / "_config.yaml")
    assert chosen.optim.lr == 5.0e-3 and chosen.optim.max_steps == 32
    assert Path(chosen.output) == out / "chosen"  # not the search's own `retrain` folder
    history = [json.loads(line) for line in (out / "chosen" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in history) == 32
    assert not (out / "search" / "retrain").exists()
    # The method's report holds the search (its trials) and the chosen config's longer training.
    report = (out / "report.md").read_text()
    assert "## Search" in report and report.count("finished") >= 2 and "| chosen | 32 |" in report
    assert (out / "tune_curves.png").is_file()
    status = json.loads((out / "method-searched.json").read_text())
    assert "config" in status["stages"]["chosen"]["inputs"]
    before = read_manifest(out / "chosen")
    assert run([str(m)]) == 0
    assert read_manifest(out / "chosen") == before


@pytest.mark.long
def test_trials_that_share_the_teacher_run_it_once_a_batch(tmp_path, train_task, student_dir, ray_session):
    """share_teacher=true: a 2-trial grid distilling from an online teacher; the first trial
    computes the teacher's embeddings of every batch, the second reads all of them (the same
    batches: same data, seed and batch size); the search's manifest leaves the cache out."""
    from densekit.artifacts import read_manifest
    from densekit.tune import tune

    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    out = tmp_path / "search"
    tune(load_config(TuneConfig, None, [
        f"base={base}", f"output={out}", "num_trials=1", "scheduler=none", "max_concurrent_trials=1",
        "share_teacher=true", "space={optim.lr: {grid: [1.0e-3, 2.0e-3]}}",
        f"overrides={{teacher.path: {student_dir}, teacher.pooling: mean, optim.max_steps: 16,"
        " losses: {contrastive: {weight: 1.0}, kl_distill: {weight: 1.0}}}",
    ]))  # fmt: skip
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["params"]["optim.lr"] for r in rows] == [1.0e-3, 2.0e-3]
    last = [json.loads((Path(r["output"]) / "metrics.jsonl").read_text().splitlines()[-1]) for r in rows]
    assert last[0]["teacher_cache_computed"] == 2 * 16 and last[0]["teacher_cache_read"] == 0
    assert last[1]["teacher_cache_computed"] == 0 and last[1]["teacher_cache_read"] == 2 * 16
    assert len(list((out / "_teacher_cache").rglob("*.pt"))) == 2 * 16
    assert not any("_teacher_cache" in f for f in read_manifest(out).get("files", {}))
    assert load_config(TrainConfig, out / "best_config.yaml").teacher_cache == str(out / "_teacher_cache")


@pytest.mark.long
def test_ctrl_c_stops_a_search_and_the_same_command_resumes_it(tmp_path, train_task, student_dir):
    """`densekit tune` in a terminal: Ctrl-C (SIGINT to its process group) while a trial trains
    stops the command (130, one line), with nothing of a result written; the same command then
    runs both trials to their full length (the interrupted one was not taken for finished)."""
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    base = write_base(tmp_path / "base.yaml", train_task, student_dir)
    out = tmp_path / "search"
    spec = tmp_path / "tune.yaml"
    spec.write_text(yaml.safe_dump({
        "base": str(base), "output": str(out), "num_trials": 1, "scheduler": "none", "max_concurrent_trials": 1,
        "space": {"optim.lr": {"grid": [5.0e-3, 2.0e-3]}},
    }))  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "platform"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "densekit.cli", "tune", str(spec)]
    log = tmp_path / "first.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.time() + 600
            while proc.poll() is None and not list(out.glob("trials/*/checkpoints/*")) and time.time() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()[-3000:]
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    assert proc.returncode == 130, text[-3000:]
    assert "interrupted (SIGINT): stopped; rerun the same command to resume" in text, text[-3000:]
    for written in ("_manifest.json", "trials.jsonl", "best_config.yaml", "best"):
        assert not (out / written).exists(), f"a stopped search wrote {written}"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["params"]["optim.lr"] for r in rows] == [5.0e-3, 2.0e-3]
    assert [(r["status"], r["steps"]) for r in rows] == [("finished", 24), ("finished", 24)], rows
