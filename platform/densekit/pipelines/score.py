"""`densekit score`: teacher scores for training groups, as a Ray Data pipeline of teacher actors.

Each teacher is one stage with its own actor pool (the model loaded once per actor): a
cross-encoder scores `[CLS] q [SEP] d [SEP]`, a ColBERT the MaxSim of q and d, a bi-encoder q·d.
With several teachers the score is their mean (an ensemble, as Margin-MSE's T2). The scores go
into the `score` field of every passage of the groups; optionally also the Margin-MSE teacher TSV.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from densekit.artifacts import (
    TableWriter,
    atomic_path,
    iter_table,
    prepare_output,
    read_manifest,
    table_parts,
    table_rows,
    write_manifest,
    writing,
)
from densekit.data import records as R
from densekit.errors import InputError
from densekit.logs import Progress
from densekit.models.compiled import compile_wanted
from densekit.pipelines.embeddings import model_fingerprint
from densekit.pipelines.encode import autocast_dtype, check_fits
from densekit.pipelines.text_encoder import release_free_memory

logger = logging.getLogger(__name__)

GROUPS_PER_CALL = 64  # groups handed to a teacher actor at once (sorted by length inside)


class TeacherScorer:
    """Callable class for map_batches: appends `column` = one list of scores per group.

    Scores follow the group's passage order: positives first, then negatives. Usable without Ray:
    `TeacherScorer(model_dir).score(queries, passages)`.

    Args:
        model: teacher directory; kind: "auto" (as saved) or the kind it must be.
        max_length: override the teacher's max passage length.
        batch_size: query-passage pairs per forward pass.
        precision: autocast on CUDA ("auto" = fp16); use_gpu: CUDA when available.
        column: the output column name.
        compile: run the pair scorer (cross-encoder) or passage encoder through `torch.compile`
            with frozen weights (densekit.models.compiled; eager if compiling fails).
    """

    def __init__(self, model: str, kind: str = "auto", max_length: int | None = None,
                 batch_size: int = 64, precision: str = "auto", use_gpu: bool = False,
                 column: str = "teacher_scores", compile: bool = False):
        import torch

        from densekit.models import load_model

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load_model(model, kind=None if kind == "auto" else kind, device=self.device,
                                overrides={"max_passage_length": max_length} if max_length else None)
        self.kind = self.model.kind
        self.path = str(model)
        self.batch_size, self.column = batch_size, column
        self.amp = autocast_dtype(self.device, precision)
        # The per-pair work (queries are encoded once per call of 64 groups).
        pairs = self.model.score_pairs if self.kind == "cross_encoder" else self.model.encode_passages
        if compile:
            from densekit.models.compiled import CompiledInference

            what = "cross-encoder" if self.kind == "cross_encoder" else f"{self.kind} passage encoder"
            pairs = CompiledInference(pairs, f"the teacher's {what}")
        self._pairs = pairs

    def _ctx(self):
        import torch

        return torch.autocast("cuda", dtype=self.amp or torch.float16, enabled=self.amp is not None)

    def score(self, queries: list[str], passages: list[list[dict]]) -> list[np.ndarray]:
        """Scores of each query's passages: `queries[i]` against every dict (text, title) of
        `passages[i]`. Returns one float32 array per query."""
        import torch

        qidx = np.array([i for i, ps in enumerate(passages) for _ in ps], dtype=np.int64)
        texts = [p[R.TEXT] or "" for ps in passages for p in ps]
        titles = [p.get(R.TITLE) or "" for ps in passages for p in ps]
        flat = np.zeros(len(texts), np.float32)
        # Longest pairs first: each forward pass pads to a similar length.
        order = np.argsort([-(len(t) + len(queries[q])) for t, q in zip(texts, qidx)], kind="stable")
        with torch.inference_mode(), self._ctx():
            q_state = self._encode_queries(queries) if self.kind != "cross_encoder" else None
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                flat[idx] = self._score_pairs(queries, q_state, qidx[idx], [texts[i] for i in idx],
                                              [titles[i] for i in idx])
        bounds = np.cumsum([0] + [len(ps) for ps in passages])
        return [flat[bounds[i] : bounds[i + 1]] for i in range(len(passages))]

    def _encode_queries(self, queries: list[str]):
        m = self.model
        enc = {k: v.to(self.device) for k, v in m.tokenize_queries(queries).items()}
        return m.encode_queries(**enc)  # bi-encoder: [B, D]; ColBERT: ([B, Lq, D], [B, Lq])

    def _score_pairs(self, queries, q_state, qi: np.ndarray, texts: list[str], titles: list[str]) -> np.ndarray:
        import torch

        m = self.model
        if self.kind == "cross_encoder":
            enc = m.tokenize_pairs([queries[i] for i in qi], texts, titles)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            return self._pairs(**enc).float().cpu().numpy()
        enc = {k: v.to(self.device) for k, v in m.tokenize_passages(texts, titles).items()}
        sel = torch.as_tensor(qi, device=self.device)
        if self.kind == "bi_encoder":
            p = self._pairs(**enc)  # [n, D]
            return (q_state[sel] * p).sum(-1).float().cpu().numpy()
        from densekit.models.colbert import maxsim_group

        q, q_mask = q_state
        d, d_mask = self._pairs(**enc)  # [n, Ld, D], [n, Ld]
        # Each pair is a group of one: [n, Lq, D] against [n, 1, Ld, D] -> [n, 1].
        return maxsim_group(q[sel], q_mask[sel], d[:, None], d_mask[:, None])[:, 0].float().cpu().numpy()

    def __call__(self, batch: pa.Table) -> pa.Table:
        queries = batch.column(R.QUERY).to_pylist()
        pos, neg = batch.column(R.POSITIVES).to_pylist(), batch.column(R.NEGATIVES).to_pylist()
        passages = [(p or []) + (n or []) for p, n in zip(pos, neg)]
        scores = self.score(queries, passages)
        release_free_memory()
        for i, s in enumerate(scores):
            if not np.isfinite(s).all():
                j = int(np.flatnonzero(~np.isfinite(s))[0])
                raise InputError(
                    self.path, None,
                    f"the teacher gave a non-finite score ({s[j]}) to qid {batch.column(R.QID)[i].as_py()}, "
                    f"pid {passages[i][j][R.PID]}; expected finite scores (are its weights intact? "
                    "with fp16, try precision=fp32)",
                )
        return batch.append_column(self.column, pa.array([s.tolist() for s in scores],
                                                         pa.list_(pa.float32())))


def _with_scores(lists: pa.ListArray, scores: pa.Array) -> pa.ListArray:
    """A list<struct> column with its structs' `score` field replaced by `scores` (flat)."""
    flat = lists.flatten()
    fields = [flat.field(f.name) if f.name != R.SCORE else scores.cast(f.type) for f in flat.type]
    structs = pa.StructArray.from_arrays(fields, fields=list(flat.type))
    return pa.ListArray.from_arrays(lists.offsets, structs, type=lists.type)


def combine_scores(batch: pa.Table, columns: list[str]) -> pa.Table:
    """Mean of the teachers' score columns, written into the groups' passages; teacher columns
    dropped. Ray Data task (batch_format="pyarrow")."""
    per_teacher = [np.concatenate([np.asarray(x, np.float32) for x in batch.column(c).to_pylist()])
                   if batch.num_rows else np.zeros(0, np.float32) for c in columns]
    mean = np.mean(per_teacher, axis=0).astype(np.float32) if per_teacher else None
    pos = batch.column(R.POSITIVES).combine_chunks()
    neg = batch.column(R.NEGATIVES).combine_chunks()
    n_pos = pc.list_value_length(pos).fill_null(0).to_numpy(zero_copy_only=False)
    n_neg = pc.list_value_length(neg).fill_null(0).to_numpy(zero_copy_only=False)
    # Per group, the flat scores are [positives..., negatives...]: split them back.
    starts = np.concatenate([[0], np.cumsum(n_pos + n_neg)])[:-1]
    pos_idx = np.concatenate([np.arange(s, s + k) for s, k in zip(starts, n_pos)] or [np.zeros(0, int)])
    neg_idx = np.concatenate([np.arange(s + p, s + p + k) for s, p, k in zip(starts, n_pos, n_neg)]
                             or [np.zeros(0, int)])
    out = batch.drop_columns(columns)
    out = out.set_column(out.schema.get_field_index(R.POSITIVES), R.POSITIVES,
                         _with_scores(pos, pa.array(mean[pos_idx.astype(int)])))
    out = out.set_column(out.schema.get_field_index(R.NEGATIVES), R.NEGATIVES,
                         _with_scores(neg, pa.array(mean[neg_idx.astype(int)])))
    return out


def _read_row_groups(batch: dict[str, np.ndarray]) -> pa.Table:
    """Ray Data task: the groups in the listed Parquet row groups."""
    return pa.concat_tables([pq.ParquetFile(str(p)).read_row_group(int(g))
                             for p, g in zip(batch["path"], batch["row_group"])])


def count_pairs(groups: str | Path) -> int:
    """Query-passage pairs in a groups table, from the Parquet metadata alone (no data read): the
    values of its positives' and negatives' pid columns (an empty list counts one)."""
    leaves = {f"{R.POSITIVES}.list.element.{R.PID}", f"{R.NEGATIVES}.list.element.{R.PID}"}
    n = 0
    for part in table_parts(groups):
        meta = pq.ParquetFile(part).metadata
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            n += sum(rg.column(i).num_values for i in range(rg.num_columns)
                     if rg.column(i).path_in_schema in leaves)
    return n


def score(cfg) -> None:
    """Score every passage of the groups in `cfg.groups` with the teachers; write `cfg.output`.

    Args:
        cfg: a ScoreConfig.
    """
    read_manifest(cfg.groups)
    out = Path(cfg.output)
    from densekit.models import check_model_files

    # Before Ray starts: a missing or mismatched teacher fails here, not in every actor.
    for t in cfg.teachers:
        check_model_files(t.model)
    teachers = [{"model": t.model, "kind": t.kind, "model_fingerprint": model_fingerprint(t.model)}
                for t in cfg.teachers]
    with writing(out, "score"):
        _score(cfg, out, teachers)


def _score(cfg, out: Path, teachers: list[dict]) -> None:
    import ray

    from densekit.raycluster import init_ray

    if not prepare_output(out, cfg, overwrite=cfg.overwrite):
        return
    init_ray(cfg.resources)
    res = cfg.resources
    n_actors = max(1, res.num_workers)
    check_fits(n_actors * len(cfg.teachers), res)
    columns = [f"__teacher_{i}" for i in range(len(cfg.teachers))]
    total = table_rows(cfg.groups)
    compile = compile_wanted(cfg.compile, count_pairs(cfg.groups) / n_actors, res.use_gpu)
    logger.info("score: %d groups, %d actors a teacher, compiled teachers %s%s", total, n_actors,
                "on" if compile else "off", " (auto)" if cfg.compile is None else "")

    ctx = ray.data.DataContext.get_current()
    keep_order = ctx.execution_options.preserve_order
    keep_raise = ctx.raise_original_map_exception
    ctx.execution_options.preserve_order = True  # output groups in input order
    ctx.raise_original_map_exception = True  # an actor's InputError reaches the driver as itself
    try:
        # One read task per Parquet row group, asking for exactly the teacher actors' resources
        # so Ray Data fuses it into the first teacher's actors (read_parquet's own listing task
        # wants a whole CPU, which a cluster busy with teacher actors may never free).
        actor_res = {"num_cpus": res.cpus_per_worker,
                     "num_gpus": res.gpus_per_worker if res.use_gpu else 0}
        items = [{"path": str(p), "row_group": g} for p in table_parts(cfg.groups)
                 for g in range(pq.ParquetFile(p).metadata.num_row_groups)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(_read_row_groups, batch_size=1, batch_format="numpy", **actor_res)
        for t, column in zip(cfg.teachers, columns):
            ds = ds.map_batches(
                TeacherScorer,
                fn_constructor_kwargs={"model": t.model, "kind": t.kind, "max_length": t.max_length,
                                       "batch_size": cfg.batch_size, "precision": cfg.precision,
                                       "use_gpu": res.use_gpu, "column": column, "compile": compile},
                batch_size=GROUPS_PER_CALL,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                **actor_res,
            )
        ds = ds.map_batches(combine_scores, fn_kwargs={"columns": columns}, batch_format="pyarrow",
                            batch_size=None, num_cpus=min(0.25, res.cpus_per_worker))
        progress = Progress(logger, "score", total=total, unit="groups")
        pairs = 0
        with TableWriter(out, R.GROUPS_SCHEMA, rows_per_part=100_000) as writer:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                writer.write(batch.select(R.GROUPS_SCHEMA.names))
                pairs += int(pc.sum(pc.list_value_length(batch.column(R.POSITIVES))).as_py() or 0)
                pairs += int(pc.sum(pc.list_value_length(batch.column(R.NEGATIVES))).as_py() or 0)
                progress.update(batch.num_rows)
        progress.done()
    finally:
        ctx.execution_options.preserve_order = keep_order
        ctx.raise_original_map_exception = keep_raise
    write_manifest(out, "score", {"teachers": teachers, "ensemble": "mean" if len(teachers) > 1 else None,
                                  "pairs": pairs, "groups": str(cfg.groups)})
    logger.info("score: %d groups, %d query-passage pairs -> %s", total, pairs, out)
    if cfg.margin_mse_tsv:
        from densekit.data.io import margin_mse_lines, write_lines

        with atomic_path(cfg.margin_mse_tsv) as tmp:
            n = write_lines(tmp, margin_mse_lines(iter_table(out), out))
        logger.info("score: %d Margin-MSE teacher lines -> %s", n, cfg.margin_mse_tsv)
