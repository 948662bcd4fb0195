"""Timing query encoding: every model in one process, on the same texts, batch size and threads,
interleaved pass by pass, keeping each one's fastest pass. `densekit report` and `densekit speed`
both time through `time_encoders`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from densekit.errors import ConfigError

if TYPE_CHECKING:
    from densekit.config import QuerySpeedConfig

logger = logging.getLogger(__name__)


@dataclass
class Speed:
    """Query-encoding throughput of one model: the fastest of `repeats` timed passes."""

    queries_per_s: float
    best_seconds: float
    seconds: list[float]  # every timed pass, in order
    num_queries: int
    batch_size: int
    threads: int | None = None


def time_encoders(
    encoders: dict[str, Callable[[list[str]], Any]],
    texts: Sequence[str],
    batch_size: int,
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Speed]:
    """Time each encoder on the same texts: `warmup` untimed passes each, then `repeats` timed
    passes interleaved across encoders (a burst of load on a shared machine then hits every
    encoder alike), keeping each one's fastest pass.

    Args:
        encoders: name -> function encoding one batch of query texts (blocking until done).
        texts: the queries, split into consecutive batches of `batch_size`.
        clock: seconds (injectable for tests).

    Returns:
        name -> Speed with queries_per_s = len(texts) / fastest pass.
    """
    if not texts:
        raise ValueError("no query texts to time")
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    for encode in encoders.values():
        for _ in range(warmup):
            for b in batches:
                encode(b)
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeats):
        for name, encode in encoders.items():
            start = clock()
            for b in batches:
                encode(b)
            seconds[name].append(clock() - start)
    out = {}
    for name, times in seconds.items():
        best = min(times)
        out[name] = Speed(len(texts) / max(best, 1e-12), best, times, len(texts), batch_size)
    return out


def model_encoder(model, device, kind: str = "queries") -> Callable[[list[str]], None]:
    """A function encoding one batch of texts with `model` (tokenisation included) as `kind`
    ("queries" or "passages"), blocking until the device is done: what `time_encoders` times.
    Call it under `torch.inference_mode()`."""
    import torch

    device = torch.device(device)
    if kind == "queries":
        tokenize, encode = model.tokenize_queries, model.encode_queries
    else:
        tokenize, encode = (lambda batch: model.tokenize_passages(batch, None)), model.encode_passages

    def run(batch: list[str]) -> None:
        enc = tokenize(batch)
        encode(**{k: v.to(device) for k, v in enc.items()})
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def measure_query_speed(model_dirs: dict[str, str], texts: Sequence[str], sc: QuerySpeedConfig) -> dict[str, Speed]:
    """Load each model (bi-encoder or ColBERT) and time its query encoding, tokenisation included,
    as `time_encoders` does; torch's thread count is set to `sc.threads` meanwhile.

    Models without a query encoder (cross-encoders) are left out of the result.
    """
    import torch

    from densekit.models import load_model

    device = torch.device(sc.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("speed.device=cuda but CUDA is not available")
    encoders = {}
    for name, path in model_dirs.items():
        model = load_model(path, device=device)
        if not hasattr(model, "encode_queries"):
            logger.info("%s: a %s has no query encoder; no speed measured", name, model.kind)
            continue
        encoders[name] = model_encoder(model, device, "queries")
    threads = torch.get_num_threads()
    torch.set_num_threads(sc.threads)
    try:
        with torch.inference_mode():
            logger.info(
                "timing query encoding of %d model(s): %d queries, batch %d, %d thread(s), %d warm-up + best of %d passes",
                len(encoders), len(texts), sc.batch_size, sc.threads, sc.warmup, sc.repeats,
            )  # fmt: skip
            speeds = time_encoders(encoders, texts, sc.batch_size, sc.repeats, sc.warmup)
    finally:
        torch.set_num_threads(threads)
    for s in speeds.values():
        s.threads = sc.threads
    return speeds
