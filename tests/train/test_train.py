"""`densekit train` on Ray Train: loss drops on a memorisable set, DDP equals one worker, outputs
load in transformers and sentence-transformers."""

from __future__ import annotations

import json

import pytest

from densekit.config import TrainConfig, load_config
from densekit.train import train

pytestmark = pytest.mark.ray


def config(task, student, out, *extra):
    return load_config(
        TrainConfig,
        None,
        [
            f"model.path={student}",
            "model.pooling=mean",
            "model.dropout=0.0",
            f"data.train={task['groups']}",
            "data.group_size=2",
            "losses.contrastive.weight=1.0",
            "losses.contrastive.params.temperature=0.1",
            "optim.lr=5e-3",
            "optim.batch_size=8",
            "optim.max_steps=24",
            "optim.warmup_steps=2",
            "eval.every=12",
            f"eval.queries={task['queries']}",
            f"eval.qrels={task['qrels']}",
            f"eval.corpus={task['corpus']}",
            "resources.num_workers=1",
            "resources.cpus_per_worker=1",
            f"output={out}",
            *extra,
        ],
    )


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_learns_and_exports(tmp_path, train_task, student_dir, ray_session, monkeypatch):
    import os

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from densekit.artifacts import read_manifest
    from densekit.models import load_model
    from densekit.train_step import evaluate_model

    # Relative paths, as a user's command line has them: Ray Train's workers run in a directory of
    # their own and must still find them (they once failed with "model directory not found").
    monkeypatch.chdir(tmp_path)
    rel = {k: os.path.relpath(v, tmp_path) for k, v in train_task.items()}
    out = tmp_path / "run"
    cfg = config(rel, os.path.relpath(student_dir, tmp_path), "run", "report=true")
    before = evaluate_model(load_model(student_dir, overrides={"pooling": "mean"}), cfg.eval, "cpu")
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    train(cfg)
    # densekit shortens Ray Train's health-check interval for its own run only (a user's value wins).
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ
    read_manifest(out)
    h = history(out)
    assert [m["step"] for m in h] == [12, 24]
    assert h[-1]["ndcg@10"] > before["ndcg@10"] + 0.2, (before, h)
    assert (out / "best" / "densekit_model.json").exists()
    # report=true: the report of the run (its best model's dev metrics and query speed).
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] and report["rows"][0]["speed"]["queries_per_s"] > 0
    assert (out / "report.md").is_file() and (out / "quality_vs_speed.png").is_file()
    AutoModel.from_pretrained(str(out / "model"))
    st = SentenceTransformer(str(out / "model"), device="cpu")
    ours = load_model(out / "model")
    import torch

    texts = ["w1 w2 w3", "w4 w5"]
    with torch.no_grad():
        mine = ours.encode_queries(**ours.tokenize_queries(texts))
    torch.testing.assert_close(torch.tensor(st.encode(texts)), mine, atol=1e-5, rtol=1e-4)
    # A rerun of a finished run does nothing.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    train(cfg)
    assert history(out) == h and os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def final_weights(out):
    from densekit.models import load_model

    return {k: v.clone() for k, v in load_model(out / "model").state_dict().items()}


@pytest.mark.slow
def test_two_workers_match_one_worker(tmp_path, train_task, student_dir, ray_session):
    """Same global batch on 1 and 2 DDP workers (gloo): the same losses and weights, because the
    data stream hands each rank its slice of the same global batch and the contrastive loss
    gathers passages across ranks."""
    import torch

    common = ["optim.max_steps=6", "eval.every=0", "checkpoint_every=3", "optim.lr=1e-3"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(config(train_task, student_dir, one, *common))
    train(config(train_task, student_dir, two, *common, "resources.num_workers=2"))
    h1, h2 = history(one), history(two)
    assert [m["step"] for m in h1] == [m["step"] for m in h2] == [3, 6]
    for a, b in zip(h1, h2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    w1, w2 = final_weights(one), final_weights(two)
    moved = False
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)
        moved |= not torch.equal(w1[k], final_weights_start(student_dir).get(k, w1[k]))
    assert moved, "training did not change the weights"


def final_weights_start(student_dir):
    from densekit.models import load_model

    return load_model(student_dir, overrides={"pooling": "mean"}).state_dict()


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(tmp_path, train_task, student_dir, ray_session, fault_plan):
    """A worker process dies after step 5 (checkpoints at 3, 6, 9): Ray Train restarts it, it resumes
    from step 3, and the run ends exactly as an uninterrupted one: same steps, same data, same
    weights."""
    import torch

    common = ["optim.max_steps=9", "eval.every=0", "checkpoint_every=3"]
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    train(config(train_task, student_dir, clean, *common))
    marker = tmp_path / "fault-fired"
    fault_plan(kill_after_step=5, marker=str(marker))  # tests/support/faultsite/densekit_faults.py
    train(config(train_task, student_dir, faulty, *common, "max_failures=1"))
    assert marker.exists(), "the fault was not injected"
    h1, h2 = history(clean), history(faulty)
    assert [m["step"] for m in h2] == [3, 6, 9]
    s1 = json.loads((clean / "summary.json").read_text())
    s2 = json.loads((faulty / "summary.json").read_text())
    assert s2["queries_seen"] == s1["queries_seen"] == 9 * 8
    assert s2["data_digest"] == s1["data_digest"]
    for a, b in zip(h1, h2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w1, w2 = final_weights(clean), final_weights(faulty)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-6, rtol=1e-5)


def test_a_worker_no_node_can_hold_is_named(ray_session, caplog):
    # Ray Train waits silently for such a worker (the quickstart asks for 2 CPUs per train worker).
    from densekit.train import warn_if_no_node_fits

    caplog.set_level("WARNING", logger="densekit.train")
    warn_if_no_node_fits({"CPU": 1.0})
    assert not caplog.records
    warn_if_no_node_fits({"CPU": 64.0})
    assert "no node has that much" in caplog.text and "cpus_per_worker" in caplog.text


def test_a_model_of_another_kind_is_refused_before_ray_starts(tmp_path, train_task, student_dir, monkeypatch):
    # A saved bi-encoder asked for as a cross-encoder: every Ray worker used to find out, each
    # retried max_failures times. The driver now refuses it, naming the key; Ray is never started.
    import ray

    from densekit.errors import ConfigError
    from densekit.models import load_model

    saved = load_model(student_dir, overrides={"pooling": "mean"}).save(tmp_path / "bi")
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    cfg = config(train_task, saved, tmp_path / "run", "model.kind=cross_encoder")
    with pytest.raises(ConfigError, match=r"model\.path=.*holds a bi_encoder model, but model\.kind=cross_encoder"):
        train(cfg)
    assert not (tmp_path / "run" / "_manifest.json").exists()
