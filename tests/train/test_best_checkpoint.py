"""The best checkpoint survives checkpoint rotation: with keep_checkpoints=2 and later evaluations
that do not beat it, best/ is still the model of the best step (not a later one)."""

from __future__ import annotations

import json

import pytest
import torch

from densekit.artifacts import TableWriter, write_manifest
from densekit.config import TrainConfig, load_config
from densekit.data.records import QRELS_SCHEMA
from densekit.train import STATE_FILE, train

pytestmark = [pytest.mark.ray, pytest.mark.long]


def weights(path):
    from densekit.models import load_model

    return load_model(path).state_dict()


def test_best_model_is_kept_when_later_evaluations_tie(
    tmp_path, train_task, student_dir, ray_session
):
    # Every dev query's relevant passage is missing from the corpus: the metric is 0 at every
    # evaluation, so the first evaluation (step 2) stays the best and the later ones tie with it.
    qrels = tmp_path / "qrels"
    with TableWriter(qrels, QRELS_SCHEMA) as w:
        w.write({"qid": ["q0", "q1"], "pid": ["absent0", "absent1"], "relevance": [1, 1]})
    write_manifest(qrels, "test")
    out = tmp_path / "run"
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"model.path={student_dir}", "model.pooling=mean", "model.dropout=0.0",
            f"data.train={train_task['groups']}", "data.group_size=2",
            "losses.contrastive.weight=1.0", "optim.lr=5e-3", "optim.batch_size=8", "optim.max_steps=8",
            "eval.every=2", f"eval.queries={train_task['queries']}", f"eval.qrels={qrels}",
            f"eval.corpus={train_task['corpus']}", "keep_checkpoints=2", f"output={out}",
        ],
    )  # fmt: skip
    train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_step"] == 2 and summary["best"]["ndcg@10"] == 0.0
    kept = {
        json.loads((d / STATE_FILE).read_text())["step"]: d
        for d in (out / "checkpoints").glob("checkpoint_*")
        if d.is_dir()
    }
    assert 2 in kept, f"the best checkpoint was deleted; kept steps {sorted(kept)}"
    best, at_step_2, final = (
        weights(out / "best"),
        weights(kept[2] / "model"),
        weights(out / "model"),
    )
    for k in best:
        torch.testing.assert_close(best[k], at_step_2[k], rtol=0, atol=0)
    assert any(not torch.equal(best[k], final[k]) for k in best), (
        "training did not move the weights"
    )
