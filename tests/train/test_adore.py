"""ADORE end to end: the query encoder trains against the top-k of a fixed document index (Ray
search actors), the passage encoder that built the index stays exactly as it was."""

from __future__ import annotations

import json

import pytest
import torch

from densekit.config import EncodeConfig, IndexConfig, TrainConfig, load_config
from densekit.pipelines.encode import encode
from densekit.pipelines.index import index
from densekit.train import train

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def query_encoder_config(tmp_path, train_task, student_dir, name: str, *keys: str) -> TrainConfig:
    """A Flat index of the student's passages, and a config training the student's query encoder
    against its top 10 (`keys` choose the loss and the rest); output tmp_path/name."""
    emb, idx = tmp_path / "emb", tmp_path / "index"
    encode(
        load_config(
            EncodeConfig,
            None,
            [f"model={student_dir}", f"input={train_task['corpus']}", f"output={emb}"],
        )
    )
    index(load_config(IndexConfig, None, [f"embeddings={emb}", f"output={idx}", "factory=Flat"]))
    common = [
        f"model.path={student_dir}", "model.dropout=0.0", f"data.train={train_task['groups']}", "data.group_size=1",
        "train_query_encoder_only=true", f"retrieved.index={idx}", "retrieved.k=10", "optim.lr=3e-3",
        "optim.batch_size=8", f"eval.queries={train_task['queries']}", f"eval.qrels={train_task['qrels']}",
        f"eval.index={idx}", f"output={tmp_path / name}",
    ]  # fmt: skip
    return load_config(TrainConfig, None, [*common, *keys])


def test_adore_trains_the_query_encoder_against_a_fixed_index(
    tmp_path, train_task, student_dir, ray_session
):
    from densekit.models import load_model
    from densekit.train_step import evaluate_model

    cfg = query_encoder_config(
        tmp_path, train_task, student_dir, "adore",
        "losses.adore_lambda.params.metric_cut=10", "optim.max_steps=90", "eval.every=90",
    )  # fmt: skip
    out = tmp_path / "adore"
    start = load_model(student_dir)
    before = evaluate_model(start, cfg.eval, "cpu")
    train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["mrr@10"] > before["mrr@10"] + 0.1, (before, summary["final"])
    trained = load_model(out / "model")
    assert (
        not trained.spec.shared
        and (out / "model" / "query").is_dir()
        and (out / "model" / "passage").is_dir()
    )
    # The passage tower is the encoder the index was built with, bit for bit.
    start_sd = start.query_tower.state_dict()
    for k, v in trained.passage_tower.state_dict().items():
        assert torch.equal(v, start_sd[k]), k
    assert any(not torch.equal(v, start_sd[k]) for k, v in trained.query_tower.state_dict().items())


def test_labels_only_twin_over_retrieved_candidates_with_every_cpu_taken(
    tmp_path, train_task, student_dir, ray_session
):
    """The query encoder trained with plain contrastive over a fixed index's top k (query-encoder
    distillation's labels-only twin), its train worker asking for every CPU of the cluster: the
    search actors must not reserve a CPU the worker then waits for forever (a run hung this way)."""
    import ray

    from densekit.models import load_model
    from densekit.train_step import evaluate_model

    cfg = query_encoder_config(
        tmp_path, train_task, student_dir, "twin",
        "losses.contrastive.params.temperature=0.1", "candidates=retrieved",
        f"resources.cpus_per_worker={ray.cluster_resources()['CPU']}", "optim.max_steps=60", "eval.every=60",
    )  # fmt: skip
    out = tmp_path / "twin"
    before = evaluate_model(load_model(student_dir), cfg.eval, "cpu")
    train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 60
    assert summary["final"]["mrr@10"] > before["mrr@10"] + 0.1, (before, summary["final"])


def test_a_loss_that_cannot_use_the_chosen_candidates_fails_before_any_worker(
    tmp_path, train_task, student_dir
):
    from densekit.errors import ConfigError
    from densekit.train.model import candidate_modes

    cfg = load_config(
        TrainConfig,
        None,
        [
            f"model.path={student_dir}",
            f"data.train={train_task['groups']}",
            "data.group_size=2",
            "data.teacher_scores=true",
            "losses.margin_mse={}",
            "candidates=retrieved",
            f"retrieved.index={tmp_path}",
            f"output={tmp_path / 'out'}",
        ],
    )
    with pytest.raises(
        ConfigError, match="candidates: retrieved: margin_mse needs group candidates"
    ):
        candidate_modes(cfg)
