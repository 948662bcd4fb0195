"""The driver of `densekit train`: checks the config and inputs before Ray starts (losses are built
once here, so a typo in their params fails in seconds), runs a TorchTrainer whose checkpoints live in
`<output>/checkpoints`, and exports the final and best students as directories that transformers and
sentence-transformers load."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from densekit.artifacts import (
    atomic_path,
    config_to_dict,
    prepare_output,
    read_manifest,
    write_json_atomic,
    write_manifest,
)
from densekit.config import TrainConfig
from densekit.errors import ConfigError, DensekitError, root_cause
from densekit.train.checkpoints import STATE_FILE
from densekit.train.model import build_objective, candidate_modes
from densekit.train.worker import train_loop_per_worker

logger = logging.getLogger(__name__)

# The package's own settings that Train's workers must see as the driver does.
FORWARDED_ENV = ("DENSEKIT_LOG_LEVEL", "DENSEKIT_VERIFY_CHECKSUMS")

# Ray Train's controller looks at its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default:
# 2 s), and a run's start and end each wait for such a look: a 24-step run of a tiny model took
# 17.0 s at 2 s and 13.5 s at 0.2 s (docs/benchmarks.md). A method runs many short train stages.
# Each look is one small call to each worker. Used when the user has not set the variable; Ray
# Train passes it from the driver to its controller.
HEALTH_CHECK_ENV = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def train(cfg: TrainConfig) -> None:
    """Train a student as `cfg` says; resume the run in `cfg.output` if one was interrupted."""
    fit(cfg)
    if cfg.report:
        from densekit.report import report_run

        report_run(cfg.output)


def warn_if_no_node_fits(per_worker: dict[str, float]) -> None:
    """Ray Train waits without a word for a worker no node can hold (on an autoscaling cluster one
    may come); say so, with what the nodes have."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if nodes and not any(all(n.get(k, 0) >= v for k, v in per_worker.items()) for n in nodes):
        logger.warning(
            "train: a worker needs %s but no node has that much (largest: %s); Ray waits until a node "
            "that fits joins. Lower resources.cpus_per_worker (or the recipe's vars.train_cpus)",
            per_worker, max(({k: n.get(k, 0) for k in per_worker} for n in nodes), key=lambda r: r.get("CPU", 0)),
        )


def search_actor_cpus(num_workers: int, cpus_per_worker: float, num_actors: int) -> float:
    """CPUs each search actor of `candidates: retrieved` reserves: half a train worker's, or what the
    cluster has left beside the train workers when that is less, down to none (the actors search small
    batches while the workers wait for them). Reserving more than is left made Ray Train wait forever
    for its workers."""
    import ray

    want = cpus_per_worker / 2
    total = float(ray.cluster_resources().get("CPU", 0.0))
    left = total - num_workers * cpus_per_worker
    if total and left < want * num_actors:
        got = max(int(100 * left / max(1, num_actors)) / 100, 0.0)
        logger.info(
            "train: the %d train worker(s) take %g of the cluster's %g CPUs; each of the %d search actor(s) "
            "reserves %g CPU (a train worker's half would not fit)",
            num_workers, num_workers * cpus_per_worker, total, num_actors, got,
        )  # fmt: skip
        return got
    return want


def fit(cfg: TrainConfig, callbacks: list | None = None):
    """The `train` step with extra Ray Train callbacks (`tune` passes its TuneReportCallback).

    Returns:
        The ray.train.Result, or None when `cfg.output` already holds this finished run.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from densekit.raycluster import init_ray

    out = Path(cfg.output).resolve()
    build_objective(cfg)  # loss names and parameters first: they need no model or data
    check_inputs(cfg)
    # Fail on unknown losses, bad params or a loss/model mismatch before any worker starts.
    mode, _ = candidate_modes(cfg)
    if not prepare_output(out, cfg, overwrite=cfg.overwrite, keep_partial=True):
        return None
    init_ray(cfg.resources)
    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker}
    warn_if_no_node_fits(per_worker)
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    searcher = None
    if mode == "retrieved":
        from densekit.pipelines.search import ShardedSearcher

        searcher = ShardedSearcher(
            cfg.retrieved.index, num_actors=cfg.retrieved.num_actors,
            cpus_per_actor=search_actor_cpus(res.num_workers, res.cpus_per_worker, cfg.retrieved.num_actors),
        )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "output": str(out), "searcher": searcher, "cwd": os.getcwd()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name="checkpoints",
            worker_runtime_env={
                "env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            },
            storage_path=str(out),
            callbacks=list(callbacks or []),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=max(1, cfg.keep_checkpoints),
                # Ranked by "is this a new best": the latest new best always outranks the rest (Ray
                # breaks ties by recency). Ranking by best_score instead let the later checkpoints,
                # which tie with it, push the one holding best/ out.
                checkpoint_score_attribute="is_best" if cfg.eval.every else None,
                checkpoint_score_order="max",
            ),
        ),
    )
    logger.info(
        "training %s on %d worker(s) (%s) for %d steps -> %s",
        cfg.model.path, res.num_workers, "GPU" if res.use_gpu else "CPU", cfg.optim.max_steps, out,
    )  # fmt: skip
    name, interval = HEALTH_CHECK_ENV
    ours = name not in os.environ
    if ours:
        os.environ[name] = interval
    try:
        result = trainer.fit()
    finally:
        if ours:
            os.environ.pop(name, None)
        if searcher is not None:
            searcher.close()
    if result.error is not None:
        # A worker's InputError (bad data found mid-run) reaches us wrapped in Train's errors.
        cause = root_cause(result.error)
        raise cause if isinstance(cause, DensekitError) else result.error
    _export(cfg, out, result)
    return result


def check_train_table(cfg: TrainConfig) -> None:
    """data.train must be the kind of table training reads: groups (group_size > 0) or queries."""
    from densekit.artifacts import open_part, table_parts
    from densekit.data import records as R
    from densekit.errors import InputError

    parts = table_parts(cfg.data.train)
    if not parts:
        raise InputError(cfg.data.train, None, "the table has no Parquet parts: nothing to train on")
    names = open_part(parts[0]).schema_arrow.names
    if cfg.data.group_size > 0:
        need = [R.QID, R.QUERY, R.POSITIVES, R.NEGATIVES]
        what = (f"a training-groups table ({', '.join(need)}: from `mine`, `score` or an import of "
                "training files) for data.group_size > 0")
    else:
        need = [R.QID, R.TEXT if R.TEXT in names else R.QUERY]
        what = "a queries table (qid, text) or training groups for data.group_size=0"
    missing = [c for c in need if c not in names]
    if missing:
        raise InputError(parts[0], None, f"data.train has columns {names}, missing {missing}; expected {what}")


def check_inputs(cfg: TrainConfig) -> None:
    """Everything the workers would otherwise find out after Ray started (and retried)."""
    from densekit.data.loader import check_training_groups
    from densekit.models import check_model_files
    from densekit.models.spec import read_spec

    for key, mc in (("model", cfg.model), ("teacher", cfg.teacher)):
        if mc is None:
            continue
        for name in ("path", "project_to"):
            path = getattr(mc, name)
            if path is not None and not Path(path).is_dir():
                raise ConfigError(f"{key}.{name}={path}: model directory not found")
            if path is not None:
                check_model_files(path)
        spec = read_spec(mc.path)
        if spec is not None and mc.kind is not None and spec.kind != mc.kind:
            # Found by every worker otherwise, each retried max_failures times.
            raise ConfigError(f"{key}.path={mc.path}: holds a {spec.kind} model, but {key}.kind={mc.kind}")
    read_manifest(cfg.data.train)
    check_train_table(cfg)
    if cfg.data.teacher_embeddings is not None:
        from densekit.pipelines.embeddings import read_embeddings_manifest

        read_embeddings_manifest(cfg.data.teacher_embeddings)
    if cfg.data.group_size > 0:
        check_training_groups(cfg.data.train, need_positive=True, need_scores=cfg.data.teacher_scores)
    for name in ("queries", "qrels", "corpus", "index"):
        path = getattr(cfg.eval, name)
        if path and cfg.eval.every:
            read_manifest(path)
    if cfg.candidates == "retrieved" or "adore_lambda" in cfg.losses:
        if not cfg.retrieved.index:
            raise ConfigError("candidates=retrieved needs retrieved.index (a densekit index output)")
        read_manifest(cfg.retrieved.index)


def _export(cfg: TrainConfig, out: Path, result) -> None:
    """Copy the final (and best) student out of Ray's checkpoints; write metrics and the manifest."""
    final = result.checkpoint
    if final is None:
        raise ConfigError(f"{out}: training finished without a checkpoint")
    with final.as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
        _copy_tree(Path(d) / "model", out / "model")
        if (Path(d) / "teacher").is_dir():
            _copy_tree(Path(d) / "teacher", out / "teacher")
    best_metrics = None
    if cfg.eval.every and state.get("best_step") is not None:
        best = next((cm for cm in result.best_checkpoints or [] if cm[1].get("step") == state["best_step"]), None)
        if best is not None:
            with best[0].as_directory() as d:
                _copy_tree(Path(d) / "best", out / "best") if (Path(d) / "best").is_dir() else _copy_tree(
                    Path(d) / "model", out / "best"
                )
        else:
            logger.warning("%s: the checkpoint of the best step %s is gone: no best/", out, state["best_step"])
        best_metrics = state.get("best_metrics")
    with atomic_path(out / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(m) + "\n" for m in state.get("history", [])))
    summary = {
        "step": state["step"],
        "queries_seen": state.get("queries_seen"),
        "data_digest": state.get("data_digest"),
        "final": state.get("history", [{}])[-1] if state.get("history") else {},
        "best_step": state.get("best_step"),
        "best": best_metrics,
        "metric": cfg.eval.metric if cfg.eval.every else None,
    }
    write_json_atomic(out / "summary.json", summary)
    write_manifest(out, "train", {"steps": state["step"], "best_step": state.get("best_step")}, exclude=("checkpoints/",))
    logger.info("train: done at step %d; model in %s", state["step"], out / "model")


def _copy_tree(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp)
