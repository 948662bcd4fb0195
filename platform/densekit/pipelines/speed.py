"""`densekit speed`: encoding throughput of several models on the same texts, and each model's
speed-up against the first (e.g. a distilled query encoder against its teacher).

All models are measured in one Ray task on one worker (a GPU when `use_gpu`), in turn and
interleaved (A B A B ...), with the same texts, batch size and thread count; the fastest of
`repeats` passes counts, so a burst of load from another process hurts no model more than the others.
The timing itself is `densekit.report.timing.time_encoders`, the one `densekit report` uses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from densekit.artifacts import (
    prepare_output,
    read_manifest,
    read_table,
    table_parts,
    write_json_atomic,
    write_manifest,
)
from densekit.config import SpeedConfig
from densekit.data import records as R
from densekit.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

RESULT = "speed.json"


def measure(models: list[str], texts: list[str], kind: str, batch_size: int, repeats: int,
            threads: int | None = None, use_gpu: bool = False) -> list[dict]:
    """Texts per second of each model encoding `texts` as `kind` ("queries" or "passages").

    Returns:
        One dict per model: model, texts_per_s (best pass), seconds (best pass), layers, params.
    """
    import torch

    from densekit.models import load_model
    from densekit.report.timing import model_encoder, time_encoders

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    loaded = []
    for path in models:
        model = load_model(path, device=device)
        if model.kind != "bi_encoder":
            raise ConfigError(f"{path} is a {model.kind}; speed measures bi-encoders (one vector per text)")
        loaded.append(model)
    # Length-sorted batches, as encode runs them: the measure is the model, not the padding. One
    # warm-up pass each (allocator, kernels, tokenizer caches), then interleaved passes, the best kept.
    ordered = sorted(texts, key=len, reverse=True)
    encoders = {str(i): model_encoder(model, device, kind) for i, model in enumerate(loaded)}
    with torch.inference_mode():
        timed = time_encoders(encoders, ordered, batch_size, repeats, warmup=1)
    best = [timed[str(i)].best_seconds for i in range(len(loaded))]
    rows = []
    for path, model, seconds in zip(models, loaded, best):
        rows.append({
            "model": str(path),
            "texts_per_s": len(texts) / seconds,
            "seconds": seconds,
            "layers": model.num_layers,
            "params": sum(p.numel() for p in model.query_tower.parameters()),
        })
    return rows


def speed(cfg: SpeedConfig) -> None:
    """Write `speed.json` into `cfg.output`: texts/s per model and the speed-up against models[0]."""
    import pyarrow.parquet as pq
    import ray

    from densekit.raycluster import init_ray

    out = Path(cfg.output)
    read_manifest(cfg.input)
    from densekit.models import check_model_files

    for m in cfg.models:
        if not Path(m).is_dir():
            raise ConfigError(f"speed: model directory {m} not found")
        check_model_files(m)  # before Ray: a folder without its weights or tokenizer fails here
    names = pq.ParquetFile(table_parts(cfg.input)[0]).schema_arrow.names
    if R.TEXT not in names:
        raise InputError(cfg.input, None, f"expected a '{R.TEXT}' column; has {names}")
    kind = cfg.kind if cfg.kind != "auto" else ("queries" if R.QID in names else "passages")
    if not prepare_output(out, cfg, overwrite=cfg.overwrite):
        return
    texts = read_table(cfg.input, columns=[R.TEXT]).column(R.TEXT).to_pylist()[: cfg.max_texts]
    texts = [t or "" for t in texts]
    init_ray(cfg.resources)
    res = cfg.resources
    task = ray.remote(measure).options(
        num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker if res.use_gpu else 0
    )
    threads = cfg.threads or max(1, int(res.cpus_per_worker))
    logger.info("speed: %d models x %d %s, batch %d, %d passes each", len(cfg.models), len(texts), kind,
                cfg.batch_size, cfg.repeats)
    rows = ray.get(task.remote(list(cfg.models), texts, kind, cfg.batch_size, cfg.repeats, threads, res.use_gpu))
    ref = rows[0]["texts_per_s"]
    for row in rows:
        row["speedup"] = row["texts_per_s"] / ref
        logger.info("speed: %s: %.0f %s/s, %.2fx", row["model"], row["texts_per_s"], kind, row["speedup"])
    write_json_atomic(out / RESULT, {
        "kind": kind, "texts": len(texts), "batch_size": cfg.batch_size, "threads": threads,
        "device": "gpu" if res.use_gpu else "cpu", "reference": rows[0]["model"], "models": rows,
    })  # fmt: skip
    write_manifest(out, "speed", {"kind": kind, "speedup": [r["speedup"] for r in rows]})
