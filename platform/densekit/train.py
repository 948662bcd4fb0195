"""`densekit train`: the one training loop for every method, on Ray Train (DDP: gloo on CPU, NCCL on GPU).

A method is a config: the student, an optional online teacher (frozen or trained jointly), the
candidate set, and named losses with weights. Nothing method-specific lives in the loop.

Driver (`train`): checks the config (losses are built once here, so a typo in their params fails in
seconds), starts a TorchTrainer whose checkpoints live in `<output>/checkpoints`, and exports the
final and best students as directories that transformers and sentence-transformers load.
Workers (`train_loop_per_worker`): [1] models, [2] optimizer and schedule, [3] resume from the
latest checkpoint, [4] the deterministic global-batch stream, [5] the loop with periodic evaluation
and checkpoints reported to Ray Train.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densekit.artifacts import (
    atomic_path,
    config_to_dict,
    prepare_output,
    read_manifest,
    write_json_atomic,
    write_manifest,
)
from densekit.config import ModelConfig, TrainConfig
from densekit.errors import ConfigError, DensekitError, root_cause
from densekit.logs import format_duration
from densekit.train_step import compute_loss, evaluate_model, index_retriever

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks it complete


# --- models ----------------------------------------------------------------------------------------


def load_configured_model(mc: ModelConfig):
    """The model a ModelConfig describes (loaded, or a student cut from teacher layers), with its
    dropout overridden when asked."""
    from densekit.models import model_from_config

    model = model_from_config(mc)
    if mc.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = mc.dropout
    return model


def build_objective(cfg: TrainConfig):
    """The weighted sum of the configured losses (checks every loss name and parameter)."""
    from densekit.losses import build_objective as _build

    return _build(cfg.losses)


def _kind(mc: ModelConfig | None) -> str | None:
    """The kind of model a ModelConfig loads, without loading it."""
    if mc is None:
        return None
    if mc.kind:
        return mc.kind
    from densekit.models.spec import read_spec

    spec = read_spec(mc.path) if Path(mc.path).is_dir() else None
    return spec.kind if spec is not None else "bi_encoder"


def candidate_modes(cfg: TrainConfig, objective=None) -> tuple[str, str | None]:
    """(student mode, teacher mode): what the losses need of the models, checked against them.

    "none" = the student encodes queries only (embedding alignment).
    """
    objective = objective or build_objective(cfg)
    student, teacher = objective.candidates(_kind(cfg.model), _kind(cfg.teacher))
    if cfg.candidates != "auto":
        student = cfg.candidates
    if cfg.data.teacher_embeddings is not None:
        if cfg.teacher is not None:
            raise ConfigError("give either `teacher` (run online) or data.teacher_embeddings (read from disk), not both")
        other = [name for name, t in objective.terms.items() if t.needs_teacher and name != "embedding_mse"]
        if other:
            raise ConfigError(
                f"data.teacher_embeddings holds query embeddings, which only embedding_mse reads; "
                f"{', '.join(other)} need a teacher model or data.teacher_scores"
            )
    elif objective.needs_teacher and cfg.teacher is None and not cfg.data.teacher_scores:
        raise ConfigError(
            "these losses need a teacher: set `teacher`, data.teacher_scores=true"
            + (" or data.teacher_embeddings" if "embedding_mse" in objective.terms else "")
        )
    return student or "none", teacher


# --- driver ----------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> None:
    """Train a student as `cfg` says; resume the run in `cfg.output` if one was interrupted."""
    fit(cfg)
    if cfg.report:
        from densekit.report import report_run

        report_run(cfg.output)


def _warn_if_no_node_fits(per_worker: dict[str, float]) -> None:
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
    _warn_if_no_node_fits(per_worker)
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    searcher = None
    if mode == "retrieved":
        from densekit.pipelines.search import ShardedSearcher

        searcher = ShardedSearcher(
            cfg.retrieved.index, num_actors=cfg.retrieved.num_actors, cpus_per_actor=res.cpus_per_worker / 2
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
                "env_vars": {k: v for k, v in os.environ.items() if k.startswith("DENSEKIT_")}
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
    try:
        result = trainer.fit()
    finally:
        if searcher is not None:
            searcher.close()
    if result.error is not None:
        # A worker's InputError (bad data found mid-run) reaches us wrapped in Train's errors.
        cause = root_cause(result.error)
        raise cause if isinstance(cause, DensekitError) else result.error
    _export(cfg, out, result)
    return result


def _check_train_table(cfg: TrainConfig) -> None:
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
    _check_train_table(cfg)
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


# --- worker ----------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. `config` = {"cfg": resolved TrainConfig dict, "output",
    "searcher", "cwd": the driver's working directory}."""
    import numpy as np
    import ray.train
    import ray.train.torch

    from densekit.data.collate import TrainCollator
    from densekit.data.loader import GlobalBatchStream, StreamPosition
    from densekit.logs import setup_logging

    setup_logging()
    # Ray Train runs workers in a directory of its own: relative paths in the config mean the folder
    # `densekit train` was started from (when this node has it; on a cluster use shared absolute paths).
    if Path(config.get("cwd", "")).is_dir():
        os.chdir(config["cwd"])
    cfg: TrainConfig = _config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.optim.seed)
    np.random.seed(cfg.optim.seed)
    objective = build_objective(cfg).to(device)
    mode, teacher_mode = candidate_modes(cfg, objective)

    # [1] Models: the student, an online teacher (frozen, or trained jointly when a loss says so),
    # and for LwF a frozen copy of the student as the stage starts.
    teacher = None
    if cfg.teacher is not None:
        teacher = load_configured_model(cfg.teacher).to(device)
        if not objective.teacher_trainable:
            teacher.eval().requires_grad_(False)
    student = load_configured_model(cfg.model).to(device)
    frozen = None
    if objective.needs_reference:
        # Rebuilt from cfg.model, not from a checkpoint: after a resume it is still the stage's start.
        frozen = copy.deepcopy(student).eval().requires_grad_(False)
    if cfg.train_query_encoder_only:
        student = _freeze_passage_tower(student)
    joint = teacher if objective.teacher_trainable else None
    module = TrainModule(student, joint, objective)
    # HF poolers are never used (densekit pools hidden states itself): freeze them, or DDP waits
    # for their gradients forever.
    for name, p in module.named_parameters():
        if ".pooler." in name:
            p.requires_grad_(False)
    module = ray.train.torch.prepare_model(  # DDP when world > 1
        module,
        parallel_strategy_kwargs={"find_unused_parameters": mode == "none" or cfg.train_query_encoder_only},
    )
    inner: TrainModule = module.module if hasattr(module, "module") else module

    # [2] AdamW (no decay on biases and LayerNorm) + linear warm-up and decay.
    params = [(n, p) for n, p in inner.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim > 1]
    no_decay = [p for n, p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr,
        eps=cfg.optim.eps,
    )
    warm, total = cfg.optim.warmup_steps, cfg.optim.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)),
    )
    amp_dtype = _amp_dtype(cfg.optim.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # [3] Resume from the latest checkpoint (worker restart or a rerun of the same command).
    state: dict[str, Any] = {
        "step": 0, "epoch": 0, "step_in_epoch": 0, "history": [], "best_score": None,
        "queries_seen": 0, "data_digest": "",  # proves a resumed run saw exactly the same data
    }  # fmt: skip
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = _load_checkpoint(Path(d), inner, optimizer, scheduler, scaler, device)
        logger.info("resumed at step %d (epoch %d, batch %d)", state["step"], state["epoch"], state["step_in_epoch"])

    # [4] Data: this rank's slice of each deterministic global batch.
    tokenizations = [student.tokenization] + ([teacher.tokenization] if teacher is not None else [])
    if frozen is not None:
        tokenizations.append(frozen.tokenization)
    collator = TrainCollator(
        group_size=cfg.data.group_size,
        negatives=cfg.data.negatives,
        positive=cfg.data.positive,
        seed=cfg.optim.seed,
        teacher_scores=cfg.data.teacher_scores,
        tokenizations=tokenizations,
        source=cfg.data.train,
    )
    stream = GlobalBatchStream(
        cfg.data.train,
        cfg.optim.batch_size,
        rank=rank,
        world_size=world,
        seed=cfg.optim.seed,
        shuffle_window=cfg.data.shuffle_window,
        source=cfg.data.source,
    )
    batches = stream(StreamPosition(state["epoch"], state["step_in_epoch"]))
    teacher_emb = None
    if cfg.data.teacher_embeddings is not None:
        from densekit.pipelines.embeddings import QueryEmbeddings

        teacher_emb = QueryEmbeddings(cfg.data.teacher_embeddings)

    # [5] The loop. One optimizer step = grad_accum micro-batches; positions count micro-batches.
    retriever = None
    if mode == "retrieved":
        retriever = index_retriever(config["searcher"], cfg.retrieved.k, cfg.retrieved.append, student)
    eval_every = cfg.eval.every
    ckpt_every = cfg.checkpoint_every or eval_every or cfg.optim.max_steps
    losses_since, parts_since, n_since, t0 = 0.0, {}, 0, time.time()
    progress = StepProgress(cfg.progress_every_s, cfg.optim.max_steps, state["step"])
    module.train()
    while state["step"] < cfg.optim.max_steps:
        optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.optim.grad_accum):
            pos, rows = next(batches)
            collator.set_epoch(pos.epoch)
            batch = collator(rows.to_pylist())
            if teacher_emb is not None:
                batch.teacher_query_emb = teacher_emb.get(batch.qids)
            batch = batch.to(device)
            sync = micro == cfg.optim.grad_accum - 1 or not hasattr(module, "no_sync")
            with (contextlib.nullcontext() if sync else module.no_sync()):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, parts = module(batch, mode, teacher_mode, teacher, frozen, retriever)
                scaler.scale(loss / cfg.optim.grad_accum).backward()
            losses_since += float(loss.detach())
            state["queries_seen"] += len(batch) * world
            state["data_digest"] = _digest(state["data_digest"], batch.qids)
            for k, v in parts.items():
                parts_since[k] = parts_since.get(k, 0.0) + float(v)
            n_since += 1
        if cfg.optim.max_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(inner.parameters(), cfg.optim.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        state["step"] += 1
        state["epoch"], state["step_in_epoch"] = pos.epoch, pos.step_in_epoch
        _maybe_inject_fault(state["step"], rank)
        if not math.isfinite(losses_since):
            raise FloatingPointError(f"loss is {losses_since} at step {state['step']} (lr too high? NaN teacher scores?)")

        step = state["step"]
        do_eval = bool(eval_every) and (step % eval_every == 0 or step == cfg.optim.max_steps)
        do_ckpt = step % ckpt_every == 0 or step == cfg.optim.max_steps or do_eval
        if not do_ckpt:
            if rank == 0 and (line := progress.line(step, losses_since / max(1, n_since))):
                logger.info("%s", line)
            continue
        progress.restart()
        # Losses averaged over the ranks too: rank 0's own queries are only its slice of the batch.
        names = sorted(parts_since)
        sums = _all_reduce_mean([losses_since, *(parts_since[k] for k in names)], world, device)
        metrics = {
            "step": step,
            "epoch": pos.epoch,
            "loss": sums[0] / max(1, n_since),
            **{f"loss/{k}": v / max(1, n_since) for k, v in zip(names, sums[1:])},
            "lr": scheduler.get_last_lr()[0],
            "queries_per_s": n_since * cfg.optim.batch_size / max(1e-9, time.time() - t0),
            "time": time.time(),  # end of the interval (unix seconds): progress over time, benchmarks
        }
        losses_since, parts_since, n_since = 0.0, {}, 0
        is_best = False
        if do_eval:
            module.eval()
            if rank == 0:
                metrics.update(evaluate_model(student, cfg.eval, device))
            module.train()
            score = metrics.get(cfg.eval.metric)
            if rank == 0 and score is not None and (state["best_score"] is None or score > state["best_score"]):
                state["best_score"], state["best_step"], state["best_metrics"] = score, step, dict(metrics)
                is_best = True
        state["history"].append(metrics)
        metrics["best_score"] = state["best_score"] if state["best_score"] is not None else -1.0
        metrics["is_best"] = float(is_best)  # the checkpoint ranking (CheckpointConfig)
        if rank == 0:
            logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k != "time"))
        _report(metrics, state, inner, optimizer, scheduler, scaler, rank, is_best)
        t0 = time.time()


class StepProgress:
    """Rank 0's progress between checkpoints: a checkpoint logs its step line, and a long interval
    without one (a 500-step cross-encoder with checkpoint_every 0) would say nothing for minutes.
    `line()` returns a progress line at most every `every_s` seconds, else None.

    The loss is rank 0's own mean since the last checkpoint (no collective: a progress line must
    not make the workers wait for each other); the checkpoint line has the mean over every rank.
    """

    def __init__(self, every_s: float, max_steps: int, start_step: int = 0, clock=time.monotonic):
        self.every_s, self.max_steps, self.clock = every_s, max_steps, clock
        self.t_start, self.step_start = clock(), start_step
        self.t_last = self.t_start

    def restart(self) -> None:
        """A checkpoint line was just logged: the next progress line is due every_s from now."""
        self.t_last = self.clock()

    def line(self, step: int, local_loss: float) -> str | None:
        now = self.clock()
        if self.every_s <= 0 or now - self.t_last < self.every_s:
            return None
        self.t_last = now
        rate = (step - self.step_start) / max(1e-9, now - self.t_start)
        left = (self.max_steps - step) / rate if rate > 0 else float("inf")
        return (
            f"step {step}/{self.max_steps} ({100 * step / self.max_steps:.0f}%): "
            f"loss {local_loss:.4g} (rank 0, since the last checkpoint), "
            f"{rate:.3g} steps/s, about {format_duration(left)} left"
        )


def _digest(previous: str, qids: list[str]) -> str:
    import hashlib

    return hashlib.sha1((previous + "\n" + ",".join(qids)).encode()).hexdigest()


def _maybe_inject_fault(step: int, rank: int, where: str = "step") -> None:
    """Fault injection for the reliability tests, once per marker file DENSEKIT_FAULT_MARKER, at
    step DENSEKIT_FAULT_AT_STEP=N on rank DENSEKIT_FAULT_RANK (default 0). DENSEKIT_FAULT_KIND:
    "kill" (default) kills the worker process after step N (DENSEKIT_FAULT_DELAY_S later: Ray
    Train registers a reported checkpoint when it next polls the worker, every 2 s; a worker that
    dies sooner resumes from the checkpoint before); "checkpoint_write" fails step
    N's checkpoint half-written, with the OSError of a full disk. Besides, DENSEKIT_FAULT_HANG_AT_STEP=M
    stops rank 0 after step M until it is killed (once per <marker>.hang): a test kills the
    driver there, at a known point."""
    hang = os.environ.get("DENSEKIT_FAULT_HANG_AT_STEP")
    if hang and int(hang) == step and rank == 0 and where == "step":
        marker = Path(os.environ["DENSEKIT_FAULT_MARKER"] + ".hang")
        if not marker.exists():
            marker.write_text(f"hang: rank {rank}, step {step}\n")
            logger.warning("fault injection: worker stops after step %d until killed", step)
            while True:
                time.sleep(1)
    at = os.environ.get("DENSEKIT_FAULT_AT_STEP")
    if not at or int(at) != step or rank != int(os.environ.get("DENSEKIT_FAULT_RANK", "0")):
        return
    kind = os.environ.get("DENSEKIT_FAULT_KIND", "kill")
    if (kind == "kill") != (where == "step"):
        return
    marker = Path(os.environ["DENSEKIT_FAULT_MARKER"])
    if marker.exists():
        return
    marker.write_text(f"{kind}: rank {rank}, step {step}\n")
    if kind == "checkpoint_write":
        logger.warning("fault injection: failing the checkpoint of step %d half-written", step)
        raise OSError(errno.ENOSPC, "No space left on device (injected while writing a checkpoint)")
    time.sleep(float(os.environ.get("DENSEKIT_FAULT_DELAY_S", "0")))
    logger.warning("fault injection: killing this worker after step %d", step)
    os._exit(1)


def _all_reduce_mean(values: list[float], world: int, device) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


def _report(metrics, state, inner, optimizer, scheduler, scaler, rank, is_best) -> None:
    """Report to Ray Train; rank 0 attaches a checkpoint (the other ranks hold the same weights)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="densekit-ckpt-") as d:
        root = Path(d)
        inner.student.save(root / "model")
        _maybe_inject_fault(state["step"], rank, "checkpoint")
        if is_best:
            # A copy, so that keeping only the latest checkpoint still keeps the best model.
            shutil.copytree(root / "model", root / "best")
        if inner.teacher is not None:
            inner.teacher.save(root / "teacher")
        torch.save(optimizer.state_dict(), root / "optimizer.pt")
        torch.save(scheduler.state_dict(), root / "scheduler.pt")
        torch.save(scaler.state_dict(), root / "scaler.pt")
        if inner.objective_has_state:
            torch.save(inner.objective.state_dict(), root / "objective.pt")
        # Last: a checkpoint without its state file is incomplete and is never resumed from.
        (root / STATE_FILE).write_text(json.dumps(state, default=float))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(root)))


def _load_checkpoint(d: Path, inner, optimizer, scheduler, scaler, device) -> dict[str, Any]:
    from densekit.models import load_model

    if not (d / STATE_FILE).is_file():
        raise ConfigError(f"{d}: checkpoint has no {STATE_FILE}: it was not written completely")
    state = json.loads((d / STATE_FILE).read_text())
    inner.student.load_state_dict(load_model(d / "model").state_dict())
    if inner.teacher is not None and (d / "teacher").is_dir():
        inner.teacher.load_state_dict(load_model(d / "teacher").state_dict())
    if inner.objective_has_state and (d / "objective.pt").is_file():
        inner.objective.load_state_dict(torch.load(d / "objective.pt", map_location=device, weights_only=True))
    optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=True))
    scaler.load_state_dict(torch.load(d / "scaler.pt", weights_only=True))
    return state


def _config_from_dict(d: dict) -> TrainConfig:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), d))  # type: ignore[return-value]


def _amp_dtype(amp: str, device):
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _freeze_passage_tower(model):
    """Only the query encoder trains (ADORE, query-encoder distillation). A shared tower is split
    into two copies first; the passage copy keeps the loaded weights, i.e. stays the encoder the
    fixed document index was built with, and is saved beside the query tower."""
    if model.spec.shared:
        model = model._untie(model.spec.replace(shared=False))
    model.passage_tower.requires_grad_(False)
    return model


class TrainModule(nn.Module):
    """Everything trainable in one module, so DDP syncs all of it: the student, a jointly trained
    teacher, and losses with parameters (e.g. learned layer weights)."""

    def __init__(self, student, teacher, objective):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.objective = objective
        self.objective_has_state = bool(list(objective.parameters()) or list(objective.buffers()))

    def forward(self, batch, mode, teacher_mode=None, teacher=None, frozen=None, retriever=None):
        return compute_loss(self, batch, mode, teacher_mode, teacher, frozen, retriever)


