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


def test_train_learns_and_exports(tmp_path, train_task, student_dir, ray_session):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from densekit.artifacts import read_manifest
    from densekit.models import load_model
    from densekit.train_step import evaluate_model

    out = tmp_path / "run"
    cfg = config(train_task, student_dir, out)
    before = evaluate_model(load_model(student_dir, overrides={"pooling": "mean"}), cfg.eval, "cpu")
    train(cfg)
    read_manifest(out)
    h = history(out)
    assert [m["step"] for m in h] == [12, 24]
    assert h[-1]["ndcg@10"] > before["ndcg@10"] + 0.2, (before, h)
    assert (out / "best" / "densekit_model.json").exists()
    AutoModel.from_pretrained(str(out / "model"))
    st = SentenceTransformer(str(out / "model"), device="cpu")
    ours = load_model(out / "model")
    import torch

    texts = ["w1 w2 w3", "w4 w5"]
    with torch.no_grad():
        mine = ours.encode_queries(**ours.tokenize_queries(texts))
    torch.testing.assert_close(torch.tensor(st.encode(texts)), mine, atol=1e-5, rtol=1e-4)
    # A rerun of a finished run does nothing.
    train(cfg)
    assert history(out) == h
