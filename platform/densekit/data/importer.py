"""`densekit import`: stream a text-format file (or a BEIR folder) into Parquet tables with manifests.

Memory stays bounded whatever the input size: rows flow through in record batches of at most
`batch_rows` rows / `batch_bytes` bytes; duplicate ids are found with 8 bytes per row (HashRuns)
and an exact re-check of suspects; ids of qrels, runs and training files are checked, and training
texts filled, through memory-mapped lookups of the corpus and queries tables (data/lookup.py).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densekit.artifacts import TableWriter, prepare_output, write_manifest
from densekit.config import ImportConfig
from densekit.data import io
from densekit.data.lookup import HashRuns, TableLookup, hash_ids
from densekit.data.records import (
    CORPUS_SCHEMA,
    GROUPS_SCHEMA,
    NEGATIVES,
    PASSAGE_TYPE,
    PID,
    POSITIVES,
    QID,
    QRELS_SCHEMA,
    QUERIES_SCHEMA,
    QUERY,
    RUN_SCHEMA,
    SCORE,
    TEXT,
    TITLE,
)
from densekit.errors import ConfigError, InputError
from densekit.logs import Progress

logger = logging.getLogger(__name__)

SCHEMAS = {"corpus": CORPUS_SCHEMA, "queries": QUERIES_SCHEMA, "qrels": QRELS_SCHEMA, "run": RUN_SCHEMA,
           "groups": GROUPS_SCHEMA}
KIND_OF_FORMAT = {
    "msmarco_docs": "corpus", "dpr_tsv": "corpus", "beir_corpus": "corpus", "beir_queries": "queries",
    "beir_qrels": "qrels", "trec_qrels": "qrels", "trec_run": "run",
    "margin_mse_tsv": "groups", "dpr_json": "groups", "prod_json": "groups",
}
ROW_GROUP_BYTES = 64 << 20  # Parquet row groups of about this many bytes (bounds the writer's buffer)


def table_kind(fmt: str, kind: str | None = None) -> str:
    """The table a format imports into: corpus, queries, qrels, run or groups."""
    if fmt == "msmarco_collection":
        return kind or "corpus"
    return KIND_OF_FORMAT[fmt]


def import_data(cfg: ImportConfig) -> None:
    """Import `cfg.path` (format `cfg.format`) into `cfg.output`; see ImportConfig.

    Writes one table with its manifest, or for format=beir `corpus/`, `queries/`, `qrels/<split>/`
    (each a table with manifest) and a top manifest. On any error the output is removed: nothing
    partial is left behind, let alone looking complete.
    """
    out = Path(cfg.output)
    src = Path(cfg.path)
    if not src.exists():
        raise ConfigError(f"path={src}: no such {'folder' if cfg.format == 'beir' else 'file'}")
    if not prepare_output(out, cfg, cfg.overwrite):
        return
    try:
        if cfg.format == "beir":
            _import_beir(cfg, src, out)
        else:
            lookups = _open_lookups(cfg, out)
            try:
                stats = import_table(cfg.format, src, out, cfg, **lookups)
            finally:
                for lk in lookups.values():
                    if lk is not None:
                        lk.close()
            write_manifest(out, "import", extra=stats)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _open_lookups(cfg: ImportConfig, out: Path) -> dict[str, TableLookup | None]:
    """Id lookups of the corpus and queries tables: kept in cfg.lookup_cache, else built in a
    temporary folder inside the output `out` (removed before its manifest is written)."""
    kind = table_kind(cfg.format, cfg.kind)
    corpus = queries = None
    if cfg.corpus and kind in ("qrels", "run", "groups"):
        cols = [TEXT, TITLE] if kind == "groups" else []
        corpus = TableLookup.for_table(cfg.corpus, PID, columns=cols, cache_dir=cfg.lookup_cache, scratch_dir=out)
    if cfg.queries and kind in ("qrels", "run", "groups"):
        cols = [TEXT] if kind == "groups" else []
        queries = TableLookup.for_table(cfg.queries, QID, columns=cols, cache_dir=cfg.lookup_cache, scratch_dir=out)
    return {"corpus": corpus, "queries": queries}


def _import_beir(cfg: ImportConfig, src: Path, out: Path) -> None:
    if not src.is_dir():
        raise ConfigError(f"path={src}: format=beir expects a folder with corpus.jsonl, queries.jsonl, qrels/")
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (src / name).is_file():
            raise InputError(src / name, None, "missing; a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    splits = sorted((src / "qrels").glob("*.tsv")) if (src / "qrels").is_dir() else []
    if not splits:
        raise InputError(src / "qrels", None, "no qrels/<split>.tsv files; expected at least one split")
    tables = {"corpus": import_table("beir_corpus", src / "corpus.jsonl", out / "corpus", cfg)}
    write_manifest(out / "corpus", "import", extra=tables["corpus"])
    tables["queries"] = import_table("beir_queries", src / "queries.jsonl", out / "queries", cfg)
    write_manifest(out / "queries", "import", extra=tables["queries"])
    if cfg.lookup_cache:
        Path(cfg.lookup_cache).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".densekit-beir-", dir=cfg.lookup_cache or out))
    try:
        with TableLookup.build(out / "corpus", scratch / "corpus", PID, columns=[]) as corpus, \
                TableLookup.build(out / "queries", scratch / "queries", QID, columns=[]) as queries:
            for split in splits:
                name = f"qrels/{split.stem}"
                tables[name] = import_table("beir_qrels", split, out / name, cfg, corpus=corpus, queries=queries)
                write_manifest(out / name, "import", extra=tables[name])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_manifest(
        out,
        "import",
        extra={"format": "beir", "source": str(src), "tables": {k: v["rows"] for k, v in tables.items()},
               "skipped": {k: v["skipped"] for k, v in tables.items() if v["skipped"]}},
    )


def import_table(
    fmt: str,
    path: Path,
    out_dir: Path,
    cfg: ImportConfig,
    corpus: TableLookup | None = None,
    queries: TableLookup | None = None,
) -> dict:
    """Stream one file into the table `out_dir` (manifest not written). Returns the manifest facts.

    Raises:
        InputError: a bad row (unless cfg.on_error=skip), or no valid row at all.
    """
    kind = table_kind(fmt, cfg.kind if fmt == "msmarco_collection" else None)
    schema = SCHEMAS[kind]
    policy = io.ErrorPolicy(cfg.on_error, cfg.max_logged_errors)
    reader_fn = io.READERS[fmt]
    kwargs: dict = {"batch_rows": cfg.batch_rows, "batch_bytes": cfg.batch_bytes}
    if fmt == "msmarco_collection":
        kwargs["kind"] = kind
    if fmt == "dpr_json":
        kwargs["pid_offset"] = cfg.pid_offset

    def read(p: io.ErrorPolicy) -> Iterator[pa.RecordBatch]:
        return reader_fn(path, policy=p, **kwargs)

    dups = _Duplicates(PID if kind == "corpus" else QID, path, read, policy) if kind in ("corpus", "queries") else None
    writer: TableWriter | None = None
    progress = Progress(logger, f"import {path.name}", unit="rows")
    max_batch = 0
    try:
        for batch in read(policy):
            max_batch = max(max_batch, batch.num_rows)
            keep = np.ones(batch.num_rows, dtype=bool)
            if dups is not None:
                keep &= dups.keep(batch)
            if kind in ("qrels", "run"):
                keep &= _known(batch, QID, queries, path, policy, "unknown_qid", "queries")
                keep &= _known(batch, PID, corpus, path, policy, "unknown_pid", "corpus")
            elif kind == "groups":
                batch, ok = _fill_groups(batch, path, policy, corpus, queries)
                keep &= ok
            if not keep.all():
                batch = batch.filter(pa.array(keep))
            batch = batch.drop_columns([io.LINE])
            if writer is None and batch.num_rows:
                per_row = max(1, batch.nbytes // batch.num_rows)
                writer = TableWriter(out_dir, schema, cfg.rows_per_part, int(np.clip(ROW_GROUP_BYTES // per_row, 1, 65_536)))
            if writer is not None:
                writer.write(batch)
            progress.update(batch.num_rows)
        if dups is not None:
            extra = dups.finish()
            if extra is not None and extra.num_rows:
                if writer is None:
                    writer = TableWriter(out_dir, schema, cfg.rows_per_part)
                writer.write(extra.drop_columns([io.LINE]))
        if writer is None:
            skipped = policy.summary()
            why = f"all skipped: {skipped}" if skipped else "the file holds none"
            raise InputError(path, None, f"no valid rows ({why}); expected at least one")
        rows = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    progress.done()
    skipped = policy.summary()
    if skipped:
        logger.warning("%s: skipped %d rows: %s", path, sum(skipped.values()), skipped)
    return {
        "format": fmt,
        "kind": kind,
        "source": str(path),
        "source_bytes": path.stat().st_size,
        "rows": rows,
        "skipped": skipped,
        "max_batch_rows": max_batch,
    }


def _known(batch, column, lookup, path, policy, reason, table) -> np.ndarray:
    """Rows whose `column` id exists in `lookup` (all rows when no lookup); reports the others."""
    if lookup is None:
        return np.ones(batch.num_rows, dtype=bool)
    found = lookup.find(batch.column(column)) >= 0
    if not found.all():
        ids, lines = batch.column(column), batch.column(io.LINE)
        for i in np.flatnonzero(~found):
            policy.bad(path, lines[i].as_py(), reason,
                       f"{column} {ids[i].as_py()!r} is not in the {table} table {lookup.source}; expected a known id")
    return found


def _fill_groups(batch, path, policy, corpus, queries) -> tuple[pa.RecordBatch, np.ndarray]:
    """Check a group batch's ids and fill null query / passage texts from the lookups."""
    n = batch.num_rows
    ok = np.ones(n, dtype=bool)
    lines = batch.column(io.LINE)
    qids, query = batch.column(QID), batch.column(QUERY)
    if queries is not None:
        qpos = queries.find(qids)
        missing = qpos < 0
        for i in np.flatnonzero(missing):
            policy.bad(path, lines[i].as_py(), "unknown_qid",
                       f"qid {qids[i].as_py()!r} is not in the queries table {queries.source}; expected a known id")
        ok &= ~missing
        looked = queries.take(np.where(missing, 0, qpos), TEXT) if len(queries) else pa.nulls(n, pa.string())
        looked = pc.if_else(pa.array(missing), pa.nulls(n, pa.string()), looked)
        query = pc.coalesce(query, looked)
    no_query = pc.is_null(query).to_numpy(zero_copy_only=False) & ok
    for i in np.flatnonzero(no_query):
        policy.bad(path, lines[i].as_py(), "missing_field",
                   f"qid {qids[i].as_py()!r}: no query text in the file; expected queries=<table> to look it up")
    ok &= ~no_query
    sides = []
    for col in (POSITIVES, NEGATIVES):
        lists = batch.column(col)
        offsets = lists.offsets.to_numpy()
        flat = lists.flatten()
        start = offsets - offsets[0]
        row_of = np.repeat(np.arange(n), np.diff(start))
        pids, texts, titles = flat.field(PID), flat.field(TEXT), flat.field(TITLE)
        bad_rows = np.zeros(n, dtype=bool)
        if corpus is not None and len(pids):
            pos = corpus.find(pids)
            missing = pos < 0
            for j in np.flatnonzero(missing):
                r = row_of[j]
                if ok[r] and not bad_rows[r]:
                    policy.bad(path, lines[r].as_py(), "unknown_pid",
                               f"pid {pids[j].as_py()!r} is not in the corpus table {corpus.source}; expected a known id")
                bad_rows[r] = True
            safe = np.where(missing, 0, pos)
            ltext = corpus.take(safe, TEXT) if len(corpus) else pa.nulls(len(pids), pa.string())
            ltitle = corpus.take(safe, TITLE) if len(corpus) else pa.nulls(len(pids), pa.string())
            null_if_missing = pa.array(missing)
            fill = pc.is_null(texts)
            texts = pc.if_else(fill, pc.if_else(null_if_missing, pa.nulls(len(pids), pa.string()), ltext), texts)
            titles = pc.if_else(fill, pc.if_else(null_if_missing, pa.nulls(len(pids), pa.string()), ltitle), titles)
        no_text = pc.is_null(texts).to_numpy(zero_copy_only=False)
        for j in np.flatnonzero(no_text):
            r = row_of[j]
            if ok[r] and not bad_rows[r]:
                policy.bad(path, lines[r].as_py(), "missing_field",
                           f"pid {pids[j].as_py()!r}: no passage text in the file; expected corpus=<table> to look it up")
            bad_rows[r] = True
        titles = pc.coalesce(titles, pa.scalar("", pa.string()))
        ok &= ~bad_rows
        struct = pa.StructArray.from_arrays([pids, texts, titles, flat.field(SCORE)], fields=list(PASSAGE_TYPE))
        sides.append(pa.ListArray.from_arrays(pa.array(start.astype(np.int32)), struct))
    out = pa.RecordBatch.from_arrays(
        [qids, query, sides[0], sides[1], lines], schema=io.GROUP_READER_SCHEMA
    )
    return out, ok


class _Duplicates:
    """Finds rows whose id appeared earlier in the file, with bounded memory.

    Every id's 64-bit hash goes into a HashRuns set (8 bytes/row). A row whose hash was seen is a
    *suspect*, re-checked exactly by re-reading the file: with on_error=raise at once (and the
    error names the line of the first occurrence); with skip, suspects are held out and settled
    together in one extra pass at the end (`finish`), where true duplicates are counted and the
    rare hash collisions (different ids, same hash) are returned to be written after all.
    """

    def __init__(self, key: str, path: Path, read: Callable[[io.ErrorPolicy], Iterator[pa.RecordBatch]],
                 policy: io.ErrorPolicy):
        self.key, self.path, self.read, self.policy = key, path, read, policy
        self.hashes = HashRuns()
        self.suspects: list[tuple[int, int]] = []  # (line, hash) held out in skip mode
        self.collisions: dict[int, set[str]] = {}  # hash -> ids known to share it (raise mode)

    def keep(self, batch: pa.RecordBatch) -> np.ndarray:
        ids = batch.column(self.key)
        h = hash_ids(ids)
        seen = self.hashes.seen_then_add(h)
        keep = ~seen
        if seen.any():
            lines = batch.column(io.LINE)
            for i in np.flatnonzero(seen):
                line, hv = lines[i].as_py(), int(h[i])
                if self.policy.skipping:
                    self.suspects.append((line, hv))
                else:
                    keep[i] = self._confirm(ids[i].as_py(), hv, line)
        return keep

    def _confirm(self, id_: str, hv: int, line: int) -> bool:
        """Raise if `id_` occurs before `line`; return True (keep the row) for a mere collision."""
        for b in self.read(io.ErrorPolicy("skip", silent=True)):
            ls = b.column(io.LINE).to_numpy()
            before = ls < line
            if not before.any():
                break
            ids = b.column(self.key).filter(pa.array(before))
            eq = pc.equal(ids, pa.scalar(id_, pa.string())).to_numpy(zero_copy_only=False)
            if eq.any():
                first = int(ls[before][np.flatnonzero(eq)[0]])
                raise InputError(self.path, line, f"duplicate {self.key} {id_!r} (first on line {first}); expected unique ids")
        self.collisions.setdefault(hv, set()).add(id_)
        logger.info("%s:%d: 64-bit hash collision of %s %r with an earlier id (kept)", self.path, line, self.key, id_)
        return True

    def finish(self) -> pa.RecordBatch | None:
        """Skip mode: settle the held-out suspects in one pass; returns the rows to write after all."""
        if not self.suspects:
            return None
        suspect_lines = {line for line, _ in self.suspects}
        wanted = np.unique(np.array([h for _, h in self.suspects], dtype=np.uint64))
        first_line: dict[int, dict[str, int]] = {}
        rescued = []
        for b in self.read(io.ErrorPolicy("skip", silent=True)):
            h = hash_ids(b.column(self.key))
            idx = np.searchsorted(wanted, h)
            idx[idx == len(wanted)] = 0
            hit = np.flatnonzero(wanted[idx] == h)
            for i in hit:
                line, id_, hv = b.column(io.LINE)[i].as_py(), b.column(self.key)[i].as_py(), int(h[i])
                known = first_line.setdefault(hv, {})
                if line in suspect_lines and id_ in known:
                    self.policy.bad(self.path, line, "duplicate_id",
                                    f"duplicate {self.key} {id_!r} (first on line {known[id_]}); expected unique ids")
                else:
                    if line in suspect_lines:  # a collision: different id, same hash
                        rescued.append(b.slice(int(i), 1))
                    known.setdefault(id_, line)
        return pa.Table.from_batches(rescued).combine_chunks().to_batches()[0] if rescued else None
