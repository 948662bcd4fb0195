"""`densekit export`: write a table (or a BEIR folder of tables) to a text format at the edges, an
embeddings table to `.npy` and a sharded index to one FAISS index (densekit.data.export_arrays).

Streams the table batch by batch and writes under a temporary name renamed on success, so a
reader never sees half an export.
"""

from __future__ import annotations

import logging
from pathlib import Path

from densekit.artifacts import (
    atomic_path,
    check_output_paths,
    iter_table,
    output_owner,
    read_manifest,
    write_marker,
)
from densekit.config import ExportConfig
from densekit.data import io
from densekit.data.export_arrays import export_faiss, export_npy
from densekit.data.records import PID, QID, QRELS_SCHEMA, RUN_SCHEMA, TEXT, TITLE
from densekit.errors import ConfigError, InputError

logger = logging.getLogger(__name__)


def _columns(table: Path) -> list[str]:
    read_manifest(table)
    first = next(iter_table(table, batch_size=1))
    return first.schema.names


def _require(table: Path, need: list[str], what: str) -> None:
    have = _columns(table)
    missing = [c for c in need if c not in have]
    if missing:
        raise InputError(table, None, f"lacks column(s) {missing} (has {have}); expected {what}")


def export_data(cfg: ExportConfig) -> None:
    """Export `cfg.input` as `cfg.format` to `cfg.output`; see ExportConfig."""
    src, out = Path(cfg.input), Path(cfg.output)
    check_output_paths(cfg)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"output={out} exists; pass overwrite=true to replace it")
    if out.is_dir() and output_owner(out) != "export":
        # overwrite=true replaces a file; a folder only when densekit exported it (beir, npy, faiss).
        raise ConfigError(
            f"output={out} is a folder that densekit export did not write; densekit never replaces "
            "it: choose another output (or move the folder away yourself)"
        )
    with atomic_path(out) as tmp:
        n = _export(cfg.format, src, tmp, cfg.tag)
    logger.info("exported %s lines of %s to %s (%s)", f"{n:,}", src, out, cfg.format)


def _export(fmt: str, src: Path, tmp: Path, tag: str) -> int:
    if fmt == "trec_run":
        _require(src, RUN_SCHEMA.names, "a run table (qid, pid, rank, score)")
        return io.write_lines(tmp, io.trec_run_lines(iter_table(src), tag))
    if fmt == "trec_qrels":
        _require(src, QRELS_SCHEMA.names, "a qrels table (qid, pid, relevance)")
        return io.write_lines(tmp, io.trec_qrels_lines(iter_table(src)))
    if fmt == "margin_mse_tsv":
        _require(src, [QID, "positives", "negatives"], "a training-groups table with teacher scores")
        return io.write_lines(tmp, io.margin_mse_lines(iter_table(src), src))
    if fmt == "msmarco_collection":
        cols = _columns(src)
        key = PID if PID in cols else QID
        _require(src, [key, TEXT], "a corpus (pid, text) or queries (qid, text) table")
        clean = io.TsvText()
        n = io.write_lines(tmp, io.id_text_lines(iter_table(src, columns=[key, TEXT]), key, clean))
        if clean.replaced:
            logger.warning("%s: %d texts held tabs or line breaks, written as spaces", src, clean.replaced)
        return n
    if fmt == "beir":
        return _export_beir(src, tmp)
    if fmt == "npy":
        return export_npy(src, tmp)
    if fmt == "faiss":
        return export_faiss(src, tmp)
    raise ConfigError(f"unknown export format {fmt!r}")


def _export_beir(src: Path, tmp: Path) -> int:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) from an imported one."""
    splits = sorted(p for p in (src / "qrels").iterdir() if p.is_dir()) if (src / "qrels").is_dir() else []
    if not splits:
        raise InputError(src / "qrels", None, "no qrels/<split> tables; expected a folder written by import format=beir or generate")
    _require(src / "corpus", [PID, TEXT, TITLE], "a corpus table")
    _require(src / "queries", [QID, TEXT], "a queries table")
    tmp.mkdir()
    write_marker(tmp, "export")
    n = io.write_lines(tmp / "corpus.jsonl", io.beir_corpus_lines(iter_table(src / "corpus")))
    n += io.write_lines(tmp / "queries.jsonl", io.beir_queries_lines(iter_table(src / "queries")))
    (tmp / "qrels").mkdir()
    for split in splits:
        _require(split, QRELS_SCHEMA.names, "a qrels table")
        n += io.write_lines(tmp / "qrels" / f"{split.name}.tsv", io.beir_qrels_lines(iter_table(split)))
    return n
