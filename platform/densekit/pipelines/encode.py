"""`densekit encode`: a corpus or query table -> embedding shards, with a Ray Data pipeline.

    read (one task per Parquet row group ∩ shard) -> TextEncoder actors (the model loaded once per
    actor; rows sorted by length, padded per batch, autocast on CUDA; each actor writes its
    batches as pieces of their shard) -> one merge task per shard once all its rows are in:
    <output>/part-NNNNN.parquet

Shard i holds input rows [i*rows_per_shard, (i+1)*rows_per_shard) in input order, whatever the
cluster did, so a rerun keeps the shards that are complete and recomputes only the others. Nothing
holds more than one shard: the driver sees only row counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from densekit.artifacts import (
    PART,
    atomic_path,
    open_part,
    prepare_output,
    read_manifest,
    table_parts,
    write_json_atomic,
    write_manifest,
    writing,
)
from densekit.data import records as R
from densekit.errors import ConfigError, DensekitError, InputError
from densekit.logs import Progress
from densekit.models.compiled import compile_wanted
from densekit.pipelines.embeddings import embeddings_batch, model_fingerprint
from densekit.pipelines.text_encoder import (
    ROW,
    TextEncoder,
    autocast_dtype,
    encode_texts,
    text_work,
)

logger = logging.getLogger(__name__)

__all__ = ["ROW", "TextEncoder", "autocast_dtype", "check_fits", "encode", "encode_texts"]

PIECES = ".pieces"
PLAN = "_plan.json"  # `_`: pandas, pyarrow and Ray Data skip it beside the parts
LEGACY_PLAN = "plan.json"  # an earlier densekit's name, read when resuming its partial output


# --- the model actor (TextEncoder, in text_encoder.py) -------------------------------------------


class _EncodeAndWrite(TextEncoder):
    """The pipeline's actor: encode a batch and write it as pieces of its shard(s) right here.

    Writing where the embeddings are made keeps them out of the object store and off the driver;
    only (shard, row count) pairs travel on.
    """

    def __init__(self, out: str, rows_per_shard: int, dtype: str, **encoder_kwargs):
        super().__init__(**encoder_kwargs)
        self.out, self.rows_per_shard, self.dtype = out, rows_per_shard, dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        encoded = super().__call__(batch)
        return _write_pieces(encoded, self.out, self.rows_per_shard, self.dtype)


# --- planning: which input rows go to which shard --------------------------------------------------


@dataclass(frozen=True)
class _Slice:
    """Rows [start, stop) of one Parquet row group, all in one shard; `first` = global row of start."""

    path: str
    row_group: int
    start: int
    stop: int
    first: int
    shard: int


def _plan(input_dir: str | Path, rows_per_shard: int) -> tuple[list[dict], list[_Slice], int]:
    """The input files (name, rows, bytes) and the read slices (row group ∩ shard) of all rows."""
    files, slices, row = [], [], 0  # row: the global number of the current row group's first row
    for part in table_parts(input_dir):
        meta = open_part(part).metadata
        files.append({"name": part.name, "rows": meta.num_rows, "bytes": part.stat().st_size})
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            start = 0
            while start < n:
                shard = (row + start) // rows_per_shard
                stop = min(n, (shard + 1) * rows_per_shard - row)
                slices.append(_Slice(str(part), g, start, stop, row + start, shard))
                start = stop
            row += n
    return files, slices, row


def _chunks(s: _Slice, n: int) -> list[_Slice]:
    """`s` cut into slices of at most n rows (same file, row group and shard)."""
    return [
        dataclasses.replace(s, start=a, stop=min(a + n, s.stop), first=s.first + (a - s.start))
        for a in range(s.start, s.stop, n)
    ]


def _read_slices(batch: dict[str, np.ndarray], key: str, with_title: bool) -> pa.Table:
    """Ray Data task: the rows of each slice, as (__row, id, text[, title])."""
    tables = []
    columns = [key, R.TEXT] + ([R.TITLE] if with_title else [])
    for path, g, start, stop, first in zip(
        batch["path"], batch["row_group"], batch["start"], batch["stop"], batch["first"]
    ):
        try:
            t = pq.ParquetFile(str(path)).read_row_group(int(g), columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise InputError(
                path, None, f"row group {int(g)}: corrupt Parquet data ({e})"
            ) from None
        t = t.slice(int(start), int(stop - start))
        t = t.rename_columns([R.ID] + columns[1:])
        tables.append(
            t.append_column(ROW, pa.array(np.arange(first, first + len(t), dtype=np.int64)))
        )
    return pa.concat_tables(tables)


def _write_pieces(batch: dict[str, np.ndarray], out: str, rows_per_shard: int, dtype: str) -> dict:
    """Write encoded rows as pieces (one per shard touched); return (shard, rows) counts."""
    rows = batch[ROW].astype(np.int64)
    shards = rows // rows_per_shard
    out_shard, out_rows = [], []
    for shard in np.unique(shards):
        sel = np.flatnonzero(shards == shard)
        sel = sel[np.argsort(rows[sel])]
        r = rows[sel]
        table = pa.Table.from_batches(
            [embeddings_batch(batch[R.ID][sel].tolist(), batch[R.EMBEDDING][sel], dtype)]
        )
        table = table.append_column(ROW, pa.array(r))
        d = Path(out) / PIECES / f"shard-{int(shard):05d}"
        d.mkdir(parents=True, exist_ok=True)
        # Named by the rows it holds: a retried task rewrites the same piece, never adds one.
        with atomic_path(d / f"rows-{r[0]:012d}-{r[-1]:012d}.parquet") as tmp:
            pq.write_table(table, tmp)
        out_shard.append(int(shard))
        out_rows.append(len(sel))
    return {"shard": np.array(out_shard, np.int64), "rows": np.array(out_rows, np.int64)}


def _merge_shard(out: str, shard: int, first: int, count: int) -> int:
    """The pieces of one shard -> part-NNNNN.parquet (rows in input order, each once)."""
    d = Path(out) / PIECES / f"shard-{shard:05d}"
    pieces = sorted(d.glob("rows-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in pieces])
    table = table.sort_by(ROW)
    rows = table.column(ROW).to_numpy()
    if len(rows) != count or not np.array_equal(rows, np.arange(first, first + count)):
        raise DensekitError(
            f"shard {shard}: pieces hold {len(rows)} rows, expected rows {first}..{first + count - 1} "
            "exactly once (the input changed during the run?)"
        )
    with atomic_path(Path(out) / PART.format(shard)) as tmp:
        pq.write_table(table.drop_columns([ROW]), tmp, row_group_size=65_536, compression="zstd")
    shutil.rmtree(d, ignore_errors=True)
    return count


class ShardMerger:
    """The step's one merging process (a Ray actor): `_merge_shard` for each finished shard."""

    def merge(self, out: str, shard: int, first: int, count: int) -> int:
        return _merge_shard(out, shard, first, count)


# --- the step --------------------------------------------------------------------------------------


def encode(cfg) -> None:
    """Encode `cfg.input` into embedding shards in `cfg.output` (see the module docstring).

    Args:
        cfg: an EncodeConfig. The manifest records dim, metric, model path and fingerprint, count.
    """
    from densekit.models.spec import read_spec, spec_from_sentence_transformers

    read_manifest(cfg.input)
    out = Path(cfg.output)
    schema = open_part(table_parts(cfg.input)[0]).schema_arrow
    kind = cfg.kind
    if kind == "auto":
        kind = "queries" if R.QID in schema.names else "passages"
    key = R.QID if kind == "queries" else R.PID
    for col in (key, R.TEXT):
        if col not in schema.names:
            raise InputError(
                cfg.input, None, f"expected a column '{col}' for kind={kind}; has {schema.names}"
            )
    with_title = kind == "passages" and R.TITLE in schema.names
    spec = read_spec(cfg.model) or spec_from_sentence_transformers(cfg.model)
    if spec is not None and spec.kind != "bi_encoder":
        raise ConfigError(
            f"{cfg.model} is a {spec.kind}; encode needs a bi-encoder (one vector per text)"
        )

    from densekit.models import check_model_files

    check_model_files(cfg.model)  # a checkpoint whose configs do not fit its weights fails here
    _check_max_length(cfg.model, cfg.max_length)
    fingerprint = model_fingerprint(cfg.model)
    files, slices, total = _plan(cfg.input, cfg.rows_per_shard)
    with writing(out, "encode", "finished shards are kept"):
        _encode(cfg, out, kind, key, with_title, spec, fingerprint, files, slices, total)


def _encode(
    cfg,
    out: Path,
    kind: str,
    key: str,
    with_title: bool,
    spec,
    fingerprint: str,
    files: list[dict],
    slices: list[_Slice],
    total: int,
) -> None:
    from densekit.raycluster import init_ray

    if not prepare_output(out, cfg, overwrite=cfg.overwrite, keep_partial=True):
        return
    num_shards = max(1, -(-total // cfg.rows_per_shard))
    plan = {
        "input": str(cfg.input),
        "files": files,
        "rows": total,
        "rows_per_shard": cfg.rows_per_shard,
        "model_fingerprint": fingerprint,
        "kind": kind,
    }
    old_plan = _read_json(out / PLAN) if (out / PLAN).exists() else _read_json(out / LEGACY_PLAN)
    if old_plan is not None and old_plan != plan:
        logger.info("%s: input or model changed since the partial run: starting over", out)
        for p in out.glob("part-*.parquet"):
            p.unlink()
    write_json_atomic(out / PLAN, plan)
    (out / LEGACY_PLAN).unlink(missing_ok=True)
    shutil.rmtree(out / PIECES, ignore_errors=True)  # pieces of unfinished shards: redone

    def expected(shard: int) -> int:
        return min(cfg.rows_per_shard, total - shard * cfg.rows_per_shard)

    done = {s for s in range(num_shards) if _part_ok(out, s, expected(s))}
    todo = [s for s in slices if s.shard not in done]
    logger.info(
        "encode %s (%s, %d rows) -> %s: %d shards, %d complete, %d to encode",
        cfg.input,
        kind,
        total,
        out,
        num_shards,
        len(done),
        num_shards - len(done),
    )
    if todo:
        init_ray(cfg.resources)
        check_fits(max(1, cfg.resources.num_workers), cfg.resources)
        _run_pipeline(cfg, out, kind, key, with_title, todo, expected)
    if total == 0:  # keep the schema: one empty shard
        dim = _model_dim(cfg.model)
        with atomic_path(out / PART.format(0)) as tmp:
            pq.write_table(
                pa.Table.from_batches([], schema=R.embeddings_schema(dim, _arrow_dtype(cfg))), tmp
            )
    dim = pq.ParquetFile(out / PART.format(0)).schema_arrow.field(R.EMBEDDING).type.list_size
    # _plan.json stays (listed in the manifest): it says which input and model the shards hold.
    write_manifest(
        out,
        "encode",
        {
            "dim": dim,
            "metric": "ip",  # dot, or cosine on normalised vectors: both are inner products
            "normalized": bool(spec.normalized) if spec is not None else False,
            "model": str(cfg.model),
            "model_fingerprint": fingerprint,
            "kind": kind,
            "count": total,
            "num_shards": num_shards,
            "rows_per_shard": cfg.rows_per_shard,
            "storage_dtype": cfg.storage_dtype,
            "input": str(cfg.input),
        },
    )
    logger.info("encode: %d %s -> %s (%d dims, %d shards)", total, kind, out, dim, num_shards)


def _run_pipeline(
    cfg, out: Path, kind: str, key: str, with_title: bool, todo: list[_Slice], expected
) -> None:
    import ray

    ctx = ray.data.DataContext.get_current()
    # A bad input row or a failed write in an actor reaches the driver as itself (e.g. InputError
    # naming the file), not as Ray Data's generic UserCodeException.
    keep_raise, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True
    try:
        _stream(cfg, out, kind, key, with_title, todo, expected)
    finally:
        ctx.raise_original_map_exception = keep_raise


def _stream(
    cfg, out: Path, kind: str, key: str, with_title: bool, todo: list[_Slice], expected
) -> None:
    import ray

    res = cfg.resources
    rows = sum(s.stop - s.start for s in todo)
    actors = max(1, res.num_workers)
    # Work units: Parquet row group ∩ shard. Too few of them (a small corpus in one row group)
    # would leave actors idle: then cut them into chunks so every actor gets ~4 batches. A chunk
    # re-reads its row group, which is cheap next to encoding it.
    batch_rows = cfg.block_rows
    if len(todo) < 4 * actors:
        # ... but never below one forward batch: a few queries need one actor, not the pool.
        floor = min(cfg.batch_size, cfg.block_rows)
        batch_rows = max(floor, min(cfg.block_rows, -(-rows // (4 * actors))))
    n_actors = max(1, min(actors, -(-rows // batch_rows)))  # no more actors than batches
    flops = text_work(cfg.model, kind, with_title, todo[0].path, cfg.max_length) if todo else None
    compile = compile_wanted(cfg.compile, rows / n_actors, res.use_gpu, flops)
    logger.info(
        "encode %s: %d rows on %d actors, compiled encoder %s%s", kind, rows, n_actors,
        "on" if compile else "off", " (auto)" if cfg.compile is None else "",
    )
    # Every work unit holds at most batch_rows rows and is one actor call (see batch_size=None below).
    todo = [c for s in todo for c in _chunks(s, batch_rows)]
    items = [dataclasses.asdict(s) for s in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 10_000)))
    # The read stage asks for exactly the actors' resources so Ray Data fuses it into them: no
    # extra hop, and no read task waiting for a CPU that the actors hold (a deadlock otherwise).
    actor_res = {
        "num_cpus": res.cpus_per_worker,
        "num_gpus": res.gpus_per_worker if res.use_gpu else 0,
    }
    ds = ds.map_batches(
        _read_slices,
        batch_size=1,
        fn_kwargs={"key": key, "with_title": with_title},
        batch_format="numpy",
        **actor_res,
    )
    ds = ds.map_batches(
        _EncodeAndWrite,
        fn_constructor_kwargs={
            "out": str(out),
            "rows_per_shard": cfg.rows_per_shard,
            "dtype": cfg.storage_dtype,
            "model": str(cfg.model),
            "kind": kind,
            "batch_size": cfg.batch_size,
            "title": cfg.title,
            "max_length": cfg.max_length,
            "precision": cfg.precision,
            "use_gpu": res.use_gpu,
            "compile": compile,
        },
        # None: one read slice (<= batch_rows rows) per call. A row count here would also be the
        # fused read stage's input bundle size, counted in slice descriptors (one row each): all
        # slices would then go to ONE task, i.e. one actor, the others idle.
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        **actor_res,
    )

    shards = sorted({s.shard for s in todo})
    remaining = {s: expected(s) for s in shards}
    # Merging is short and I/O-bound: it must not wait for a CPU the model actors hold until the
    # end (num_cpus=0), or no shard would be finished, hence resumable, before the whole run is.
    # One long-lived merger for the whole step: a task per shard started a fresh Ray worker
    # process each time (Ray keeps no idle worker beyond the node's CPU count, which the model
    # actors fill), about a second of CPU per shard taken from the actors.
    merger = ray.remote(num_cpus=0, max_restarts=2, max_task_retries=2)(ShardMerger).remote()
    merges = []
    progress = Progress(logger, f"encode {kind}", total=sum(remaining.values()))
    # Only (shard, row count) pairs reach the driver; a shard is merged as soon as it is whole.
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in batches:
            for shard, n in zip(batch["shard"].tolist(), batch["rows"].tolist()):
                remaining[shard] -= n
                progress.update(n)
                if remaining[shard] == 0:
                    merges.append(merger.merge.remote(
                        str(out), shard, shard * cfg.rows_per_shard, expected(shard)))
                elif remaining[shard] < 0:
                    raise DensekitError(f"shard {shard} received more rows than it holds")
    finally:
        # On an error, stop Ray Data's executor and its model actors now: a traceback kept alive
        # (a caller that catches the error and goes on) held their CPUs, and the next step hung.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    progress.done()
    ray.get(merges)
    short = {s: n for s, n in remaining.items() if n}
    if short:
        raise DensekitError(f"encode: shards {sorted(short)} are missing rows: {short}")
    shutil.rmtree(out / PIECES, ignore_errors=True)


def check_fits(actors: int, resources) -> None:
    """Warn when `actors` actors of `resources` cannot all be placed on the cluster as it is now
    (Ray Data would wait for them; an autoscaling cluster may still add the nodes)."""
    import ray

    total = ray.cluster_resources()
    what = "GPU" if resources.use_gpu else "CPU"
    need = actors * (resources.gpus_per_worker if resources.use_gpu else resources.cpus_per_worker)
    if need > total.get(what, 0) + 1e-9:
        logger.warning(
            "%d actors need %g %s but the Ray cluster has %g: the pipeline waits until that many "
            "are available (lower resources.num_workers or resources.%s_per_worker)",
            actors,
            need,
            what,
            total.get(what, 0),
            what.lower() + "s",
        )


def _part_ok(out: Path, shard: int, rows: int) -> bool:
    p = out / PART.format(shard)
    if not p.exists():
        return False
    try:
        return pq.ParquetFile(p).metadata.num_rows == rows
    except (pa.ArrowInvalid, OSError):
        return False


def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _arrow_dtype(cfg) -> pa.DataType:
    return pa.float16() if cfg.storage_dtype == "float16" else pa.float32()


def _check_max_length(model: str, max_length: int | None) -> None:
    """max_length beyond the model's position embeddings would fail inside the actors on the first
    long text: refuse it before Ray starts (from the model's config.json, when it has one)."""
    if max_length is None:
        return
    path = Path(model) / "config.json"
    try:
        conf = json.loads(path.read_text())
        positions = int(conf["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if conf.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # their first two positions are reserved (padding offset)
    if max_length > positions:
        raise ConfigError(
            f"max_length={max_length}: {path} says the model has {positions} positions; "
            f"expected max_length <= {positions}"
        )


def _model_dim(model: str) -> int:
    from densekit.models import load_model

    return int(load_model(model, kind="bi_encoder").dim)
