"""The training-data stream: deterministic global batches, each DDP rank taking its slice.

Every rank reads the same seeded order of rows (part files permuted per epoch, rows shuffled in
windows) and cuts global batch s into `world_size` equal slices; rank r keeps slice r. So:
- a run resumed from (epoch, step) continues with exactly the rows it would have seen;
- 1 worker and N workers see the same global batches (the N-worker loss equals the 1-worker loss
  up to float error), which Ray Data's dynamic streaming split cannot promise.
Reading is duplicated across ranks (each decodes Parquet it then drops), which costs IO but no
tokenisation or GPU time. Memory is bounded by one shuffle window.

Sources: `arrow` reads the Parquet parts with pyarrow (local paths or any pyarrow filesystem URI);
`ray_data` reads them with `ray.data.read_parquet` (order preserved). Both give the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densekit.artifacts import open_part, read_manifest, table_parts
from densekit.data.records import NEGATIVES, PID, POSITIVES, QID, SCORE
from densekit.errors import ConfigError, InputError

logger = logging.getLogger(__name__)


@dataclass
class StreamPosition:
    """Where a stream is: the epoch and the number of global batches already taken in it."""

    epoch: int = 0
    step_in_epoch: int = 0


def _epoch_rng(seed: int, epoch: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, salt])


class GlobalBatchStream:
    """Yield this rank's slice of consecutive global batches of a Parquet table, forever (epochs).

    Args:
        table: table directory (part-*.parquet + _manifest.json).
        global_batch_size: rows per optimisation step over all ranks; must divide by world_size.
        rank, world_size: this worker's DDP rank and the world size.
        seed: shuffling seed; the order is a function of (seed, epoch) only.
        shuffle: permute parts and rows within windows each epoch.
        shuffle_window: rows shuffled together (memory bound); the whole table if it fits.
        source: "arrow" or "ray_data".
        columns: columns to read (None = all).
    """

    def __init__(
        self,
        table: str | Path,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_window: int = 100_000,
        source: str = "arrow",
        columns: list[str] | None = None,
    ):
        if global_batch_size % world_size:
            raise ConfigError(
                f"batch size {global_batch_size} does not divide by {world_size} workers: "
                "every worker must get the same number of queries per step"
            )
        read_manifest(table, deep=False)  # sizes: the driver checked the sha256s before Ray started
        self.parts = [str(p) for p in table_parts(table)]
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.shuffle_window = seed, shuffle, shuffle_window
        self.source, self.columns = source, columns
        if source not in ("arrow", "ray_data"):
            raise ConfigError(f"unknown data source '{source}'; expected arrow or ray_data")

    def _raw_batches(self, parts: list[str]) -> Iterator[pa.RecordBatch]:
        if self.source == "arrow":
            import pyarrow.parquet as pq

            for p in parts:
                yield from pq.ParquetFile(p).iter_batches(batch_size=8192, columns=self.columns)
        else:
            import ray

            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True
            ds = ray.data.read_parquet(parts, columns=self.columns, shuffle=None)
            for b in ds.iter_batches(batch_size=8192, batch_format="pyarrow"):
                yield from b.to_batches()

    def _epoch_rows(self, epoch: int) -> Iterator[pa.Table]:
        """The epoch's rows in their shuffled order, one window (a pa.Table) at a time."""
        parts = list(self.parts)
        if self.shuffle:
            order = _epoch_rng(self.seed, epoch).permutation(len(parts))
            parts = [parts[i] for i in order]
        window: list[pa.RecordBatch] = []
        rows = 0
        index = 0

        def emit(batches: list[pa.RecordBatch], index: int) -> pa.Table:
            t = pa.Table.from_batches(batches)
            if self.shuffle:
                t = t.take(_epoch_rng(self.seed, epoch, index + 1).permutation(t.num_rows))
            return t

        for b in self._raw_batches(parts):
            window.append(b)
            rows += b.num_rows
            if rows >= self.shuffle_window:
                yield emit(window, index)
                window, rows, index = [], 0, index + 1
        if window:
            yield emit(window, index)

    def steps_per_epoch(self, total_rows: int) -> int:
        return total_rows // self.global_batch_size

    def __call__(self, start: StreamPosition) -> Iterator[tuple[StreamPosition, pa.Table]]:
        """Yield (position after this batch, this rank's rows) from `start` on, epoch after epoch.

        The last incomplete global batch of an epoch is dropped so every rank always gets
        `global_batch_size / world_size` rows.
        """
        epoch, skip = start.epoch, start.step_in_epoch * self.global_batch_size
        lo = self.rank * self.local_batch_size
        while True:
            step = 0
            pending: list[pa.Table] = []
            pending_rows = 0
            for window in self._epoch_rows(epoch):
                if skip:
                    drop = min(skip, window.num_rows)
                    window, skip = window.slice(drop), skip - drop
                    if not window.num_rows:
                        continue
                pending.append(window)
                pending_rows += window.num_rows
                while pending_rows >= self.global_batch_size:
                    buf = pa.concat_tables(pending)
                    batch, rest = buf.slice(0, self.global_batch_size), buf.slice(self.global_batch_size)
                    pending, pending_rows = [rest], rest.num_rows
                    step += 1
                    pos = StreamPosition(epoch, start.step_in_epoch + step if epoch == start.epoch else step)
                    yield pos, batch.slice(lo, self.local_batch_size)
            if step == 0 and not (epoch == start.epoch and start.step_in_epoch):
                raise ConfigError(
                    f"{self.parts[0]}: fewer rows than one global batch ({self.global_batch_size})"
                )
            epoch, skip = epoch + 1, 0


def check_training_groups(table: str | Path, need_positive: bool, need_scores: bool) -> int:
    """Refuse, before training starts, groups the training loop would fail on hours later.

    Reads only the Parquet leaves concerned (positive pids, passage scores), not the texts.

    Args:
        table: a training-groups table.
        need_positive: every group must hold at least one positive.
        need_scores: every passage must have a finite teacher score (`data.teacher_scores`).

    Returns:
        The number of groups checked.

    Raises:
        InputError: naming the part file, the group (1-based row in the file) and its qid.
    """
    if not (need_positive or need_scores):
        return 0
    columns = [QID, f"{POSITIVES}.list.element.{PID}"]
    if need_scores:
        columns += [f"{side}.list.element.{f}" for side in (POSITIVES, NEGATIVES) for f in (PID, SCORE)]
    checked = 0
    for part in table_parts(table):
        pf = open_part(part)
        if POSITIVES not in pf.schema_arrow.names:
            return checked  # a queries table (group_size 0): nothing to check
        row = 0
        for batch in pf.iter_batches(batch_size=65_536, columns=list(dict.fromkeys(columns))):
            qids = batch.column(QID)
            if need_positive:
                n = pc.list_value_length(batch.column(POSITIVES)).fill_null(0).to_numpy(zero_copy_only=False)
                if (n == 0).any():
                    i = int(np.flatnonzero(n == 0)[0])
                    raise InputError(part, row + i + 1, f"group of qid {qids[i].as_py()!r} has no positive; "
                                     "expected at least one positive passage per training group")
            if need_scores:
                for side in (POSITIVES, NEGATIVES):
                    lists = batch.column(side)
                    flat = lists.flatten()
                    scores = flat.field(SCORE)
                    ok = pc.fill_null(pc.is_finite(scores), False).to_numpy(zero_copy_only=False)
                    if not ok.all():
                        j = int(np.flatnonzero(~ok)[0])
                        offsets = lists.offsets.to_numpy()
                        i = int(np.searchsorted(offsets - offsets[0], j, side="right") - 1)
                        value = scores[j].as_py()
                        what = "no teacher score" if value is None else f"teacher score {value}"
                        raise InputError(
                            part, row + i + 1,
                            f"qid {qids[i].as_py()!r}, {side[:-1]} {flat.field(PID)[j].as_py()!r}: {what}; "
                            "expected a finite score for every passage (run the score step; check the teacher)",
                        )
            row += batch.num_rows
        checked += row
    return checked
