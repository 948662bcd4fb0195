"""`densekit build`: a small randomly initialised encoder and its tokenizer, built offline.

MINIMAL version written for the quickstart; the methods branch has the full one (same config).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from densekit.artifacts import iter_table, prepare_output, read_manifest, table_parts, write_manifest
from densekit.config import BuildConfig
from densekit.data import records as R
from densekit.errors import ConfigError, InputError

logger = logging.getLogger(__name__)


def iter_texts(tables: list[str]) -> Iterator[str]:
    """Every non-empty `text` and `title` of `tables` (streamed)."""
    import pyarrow.parquet as pq

    for table in tables:
        names = pq.read_schema(table_parts(table)[0]).names
        if R.TEXT not in names:
            raise InputError(table, None, f"expected a '{R.TEXT}' column; has {names}")
        columns = [R.TEXT] + ([R.TITLE] if R.TITLE in names else [])
        for batch in iter_table(table, columns):
            for column in batch.columns:
                yield from (v for v in column.to_pylist() if v)


def build(cfg: BuildConfig) -> None:
    """Write a randomly initialised encoder and its tokenizer into `cfg.output`, manifest last."""
    from densekit.models.tiny import build_tiny_model

    out = Path(cfg.output)
    if cfg.tokenizer_from is not None and not Path(cfg.tokenizer_from).is_dir():
        raise ConfigError(f"tokenizer_from={cfg.tokenizer_from}: model directory not found")
    for table in cfg.texts:
        read_manifest(table)
    if not prepare_output(out, cfg, overwrite=cfg.overwrite):
        return
    build_tiny_model(
        out, iter_texts(cfg.texts), arch=cfg.arch, layers=cfg.layers, hidden=cfg.hidden, heads=cfg.heads,  # type: ignore[arg-type]
        intermediate=cfg.intermediate or 4 * cfg.hidden, vocab_size=cfg.vocab_size,
        max_positions=cfg.max_positions, seed=cfg.seed, tokenizer_from=cfg.tokenizer_from,
    )  # fmt: skip
    write_manifest(out, "build", {"arch": cfg.arch, "layers": cfg.layers, "hidden": cfg.hidden})
