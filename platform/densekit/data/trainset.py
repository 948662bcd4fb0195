"""`densekit trainset`: training and dev splits from a labelled collection, with pseudo-queries
written from the corpus itself.

- **Dev queries from the training split.** `dev_queries` judged queries of `qrels` are held out
  (a seeded draw) as `qrels/dev`: model selection and tuning never look at the test judgements.
- **Title pseudo-queries** (`title_queries`): each document's title becomes a query (`<prefix>t-<pid>`)
  that judges its own document, relevance 1: sparse labels, as MS MARCO's, many more of them than a
  small collection has (SciFact: 5,183 titles against 809 judged training queries).
- **Sentence pseudo-queries** (`sentence_queries`): up to n sentences of the documents' text
  (at least `min_words` words each, de-duplicated, a seeded sample), unjudged: text for methods
  that learn from query text alone (query-encoder embedding alignment).

Writes `<output>/queries` (every query of the splits: training, pseudo and dev), `train_queries`
(what training reads: the training and pseudo-queries, not the dev ones), `labelled_queries` (the
judged ones: training, title and dev queries, for a teacher's run to mine from), `qrels/train`
(training queries' and title queries' judgements) and `qrels/dev`, each a table with a manifest,
then a top manifest with the counts.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import pyarrow as pa

from densekit.artifacts import (
    TableWriter,
    iter_table,
    prepare_output,
    read_manifest,
    read_table,
    write_manifest,
)
from densekit.config import TrainsetConfig
from densekit.data import records as R
from densekit.errors import InputError
from densekit.logs import Progress

logger = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def trainset(cfg: TrainsetConfig) -> None:
    """Write the splits of `cfg.qrels` and the pseudo-queries of `cfg.corpus` (module docstring)."""
    out = Path(cfg.output)
    for path in (cfg.corpus, cfg.queries, cfg.qrels):
        read_manifest(path)
    qrels = read_table(cfg.qrels, [R.QID, R.PID, R.RELEVANCE]).to_pylist()
    queries = {r[R.QID]: r[R.TEXT] for r in read_table(cfg.queries, [R.QID, R.TEXT]).to_pylist()}
    judged = sorted({r[R.QID] for r in qrels if r[R.RELEVANCE] > 0})
    missing = [q for q in judged if q not in queries]
    if missing:
        raise InputError(cfg.qrels, None, f"qid {missing[0]!r} ({len(missing)} in all) is not in queries={cfg.queries}")
    if cfg.dev_queries >= len(judged) and cfg.dev_queries > 0:
        raise InputError(
            cfg.qrels, None,
            f"dev_queries={cfg.dev_queries} but the qrels judge only {len(judged)} queries: nothing left to train on",
        )
    if not prepare_output(out, cfg, overwrite=cfg.overwrite):
        return
    dev = set(random.Random(cfg.seed).sample(judged, cfg.dev_queries)) if cfg.dev_queries else set()
    train_rows = [r for r in qrels if r[R.QID] not in dev]
    dev_rows = [r for r in qrels if r[R.QID] in dev]
    train_q = {q: queries[q] for q in judged if q not in dev}
    counts = {"train_queries": len(train_q), "dev_queries": len(dev), "title_queries": 0, "sentence_queries": 0}

    # Pseudo-queries from the corpus, streamed; sentences are sampled with a reservoir (bounded memory).
    titles: dict[str, str] = {}
    reservoir: list[tuple[str, str]] = []
    seen_sentences = 0
    seen_texts = set(train_q.values())
    rng = random.Random(cfg.seed + 1)
    progress = Progress(logger, "trainset: corpus", unit="documents")
    if cfg.title_queries or cfg.sentence_queries:
        for batch in iter_table(cfg.corpus, [R.PID, R.TEXT, R.TITLE], batch_size=16_384):
            for pid, text, title in zip(*(batch.column(c).to_pylist() for c in (R.PID, R.TEXT, R.TITLE))):
                progress.update(1)
                title = (title or "").strip()
                if cfg.title_queries and title and title not in seen_texts:
                    seen_texts.add(title)
                    titles[pid] = title
                if cfg.sentence_queries:
                    for i, s in enumerate(SENTENCE_END.split(text or "")):
                        s = s.strip()
                        if len(s.split()) < cfg.min_words or s in seen_texts:
                            continue
                        seen_texts.add(s)
                        seen_sentences += 1
                        item = (f"{cfg.id_prefix}s-{pid}-{i}", s)
                        if len(reservoir) < cfg.sentence_queries:
                            reservoir.append(item)
                        elif (j := rng.randrange(seen_sentences)) < cfg.sentence_queries:
                            reservoir[j] = item
        progress.done()
    taken = set(queries)
    title_q = {f"{cfg.id_prefix}t-{pid}": t for pid, t in titles.items()}
    clash = next((q for q in [*title_q, *(q for q, _ in reservoir)] if q in taken), None)
    if clash is not None:
        raise InputError(cfg.queries, None, f"pseudo-query id {clash!r} is already a query id; set another id_prefix")
    counts["title_queries"], counts["sentence_queries"] = len(title_q), len(reservoir)
    counts["sentences_seen"] = seen_sentences
    train_rows += [{R.QID: q, R.PID: pid, R.RELEVANCE: 1} for q, pid in zip(title_q, titles)]

    def write(name: str, schema: pa.Schema, rows: dict) -> None:
        with TableWriter(out / name, schema) as w:
            w.write(pa.table(rows, schema=schema))
        write_manifest(out / name, "trainset")

    training = {**train_q, **title_q, **dict(reservoir)}
    dev_q = {q: queries[q] for q in sorted(dev)}
    every = {**training, **dev_q}
    write("queries", R.QUERIES_SCHEMA, {R.QID: list(every), R.TEXT: list(every.values())})
    write("train_queries", R.QUERIES_SCHEMA, {R.QID: list(training), R.TEXT: list(training.values())})
    labelled = {**train_q, **title_q, **dev_q}  # the judged ones: what a teacher's run for mining needs
    write("labelled_queries", R.QUERIES_SCHEMA, {R.QID: list(labelled), R.TEXT: list(labelled.values())})
    for name, rows in (("qrels/train", train_rows), ("qrels/dev", dev_rows)):
        write(name, R.QRELS_SCHEMA, {c: [r[c] for r in rows] for c in (R.QID, R.PID, R.RELEVANCE)})
    logger.info(
        "trainset: %d training queries, %d dev, %d title and %d sentence pseudo-queries -> %s",
        counts["train_queries"], counts["dev_queries"], counts["title_queries"], counts["sentence_queries"], out,
    )  # fmt: skip
    write_manifest(out, "trainset", {"counts": counts, "qrels": str(cfg.qrels), "corpus": str(cfg.corpus)})
