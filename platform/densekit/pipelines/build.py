"""`densekit build`: a small randomly initialised encoder, built offline, as a method's starting point.

Small method runs need models without hub access: a tokenizer trained on the task's own tables
(or copied from another model, so that a teacher and its students tokenize alike) and an encoder of
the asked size, written with `save_pretrained` (densekit.models.tiny.build_tiny_model).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from densekit.artifacts import iter_table, prepare_output, read_manifest, write_manifest
from densekit.config import BuildConfig
from densekit.data import records as R
from densekit.errors import ConfigError, InputError

logger = logging.getLogger(__name__)


def iter_texts(tables: list[str], max_rows: int | None = None) -> Iterator[str]:
    """Stream the `text` (and `title`, when present and non-empty) of every row of `tables`.

    Raises:
        InputError: a table without a `text` column.
    """
    import pyarrow.parquet as pq

    from densekit.artifacts import table_parts

    for table in tables:
        read_manifest(table)
        names = pq.ParquetFile(table_parts(table)[0]).schema_arrow.names
        if R.TEXT not in names:
            raise InputError(table, None, f"expected a '{R.TEXT}' column to train a tokenizer on; has {names}")
        columns = [R.TEXT] + ([R.TITLE] if R.TITLE in names else [])
        rows = 0
        for batch in iter_table(table, columns, batch_size=8192):
            cols = [batch.column(c).to_pylist() for c in columns]
            for values in zip(*cols):
                for v in values:
                    if v:
                        yield v
                rows += 1
                if max_rows is not None and rows >= max_rows:
                    break
            if max_rows is not None and rows >= max_rows:
                break


def build(cfg: BuildConfig) -> None:
    """Write a randomly initialised encoder and its tokenizer into `cfg.output`, manifest last."""
    from densekit.models.tiny import build_tiny_model

    out = Path(cfg.output)
    if cfg.tokenizer_from is not None and not Path(cfg.tokenizer_from).is_dir():
        raise ConfigError(f"tokenizer_from={cfg.tokenizer_from}: model directory not found")
    for table in cfg.texts:
        read_manifest(table)  # refuse an incomplete input before any work
    if not prepare_output(out, cfg, overwrite=cfg.overwrite):
        return
    build_tiny_model(
        out,
        iter_texts(cfg.texts, cfg.max_texts),
        arch=cfg.arch,  # type: ignore[arg-type]
        layers=cfg.layers,
        hidden=cfg.hidden,
        heads=cfg.heads,
        intermediate=cfg.intermediate or 4 * cfg.hidden,
        vocab_size=cfg.vocab_size,
        max_positions=cfg.max_positions,
        seed=cfg.seed,
        tokenizer_from=cfg.tokenizer_from,
    )
    from transformers import AutoConfig

    n_vocab = AutoConfig.from_pretrained(str(out)).vocab_size
    write_manifest(out, "build", {"arch": cfg.arch, "layers": cfg.layers, "hidden": cfg.hidden, "vocab": n_vocab})
    logger.info("build: %s encoder, %d layers x %d, vocabulary %d -> %s", cfg.arch, cfg.layers, cfg.hidden, n_vocab, out)
