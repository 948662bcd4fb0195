"""The loop every Ray Train worker runs (`train_loop_per_worker`): [1] models, [2] optimizer and
schedule, [3] resume from the latest checkpoint, [4] the deterministic global-batch stream, [5] the
loop with periodic evaluation and checkpoints reported to Ray Train."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from densekit.config import TrainConfig
from densekit.models.compiled import compile_wanted
from densekit.train.checkpoints import load_checkpoint, report_checkpoint
from densekit.train.model import (
    TrainModule,
    build_objective,
    candidate_modes,
    freeze_passage_tower,
    load_configured_model,
)
from densekit.train.progress import StepProgress
from densekit.train.step import evaluate_model, index_retriever

logger = logging.getLogger(__name__)


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
    compiled_teacher = []  # CompiledInference of each compiled teacher transformer
    if cfg.teacher is not None and not objective.reads_teacher:
        if rank == 0:
            logger.info("teacher %s not loaded: every loss that reads it has weight 0", cfg.teacher.path)
    elif cfg.teacher is not None:
        teacher = load_configured_model(cfg.teacher).to(device)
        if not objective.teacher_trainable:
            teacher.eval().requires_grad_(False)
        if cfg.teacher_cache:
            from densekit.artifacts import config_to_dict
            from densekit.models.embed_cache import attach

            attach(teacher, cfg.teacher_cache, config_to_dict(cfg.teacher), cfg.teacher.path, objective.teacher_trainable)
        texts = cfg.optim.max_steps * (cfg.optim.batch_size // world) * (1 + max(cfg.data.group_size, 0))
        if not objective.teacher_trainable and compile_wanted(cfg.compile_teacher, texts, device.type == "cuda"):
            from densekit.models.compiled import compile_frozen_towers

            compiled_teacher = compile_frozen_towers(teacher, "the teacher")
            if rank == 0:
                logger.info("teacher %s: compiled (frozen weights)", cfg.teacher.path)
    student = load_configured_model(cfg.model).to(device)
    frozen = None
    if objective.needs_reference:
        # Rebuilt from cfg.model, not from a checkpoint: after a resume it is still the stage's start.
        frozen = copy.deepcopy(student).eval().requires_grad_(False)
    if cfg.train_query_encoder_only:
        student = freeze_passage_tower(student)
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
            state = load_checkpoint(Path(d), inner, optimizer, scheduler, scaler, device)
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
        if (cache := getattr(teacher, "embed_cache", None)) is not None:
            # Tower batches (queries, passages) of the teacher read from teacher_cache and computed
            # (then kept there), all ranks, since this run (re)started.
            read, computed = _all_reduce_mean([float(cache.hits), float(cache.misses)], world, device)
            metrics["teacher_cache_read"], metrics["teacher_cache_computed"] = read * world, computed * world
        if compiled_teacher:
            # 1 while the compiled teacher runs; 0 once compiling failed and it runs eagerly.
            metrics["teacher_compiled"] = float(not any(f.failed for f in compiled_teacher))
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
        report_checkpoint(metrics, state, inner, optimizer, scheduler, scaler, rank, is_best)
        t0 = time.time()


def _digest(previous: str, qids: list[str]) -> str:
    import hashlib

    return hashlib.sha1((previous + "\n" + ",".join(qids)).encode()).hexdigest()


def _all_reduce_mean(values: list[float], world: int, device) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


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
