"""Column names and Arrow schemas of densekit's internal Parquet tables.

Ids are strings everywhere (MS MARCO's integer ids become "123"): pytrec_eval, TREC files and
BEIR all key by string, and mixing int and str ids is the classic silent-zero-metrics bug.

Tables:
    corpus      pid, text, title
    queries     qid, text
    qrels       qid, pid, relevance
    run         qid, pid, rank (1-based), score
    groups      qid, query, positives, negatives   (training groups; passages are structs)
    embeddings  id, embedding (fixed-size list of float32)
"""

from __future__ import annotations

import pyarrow as pa

QID, PID, TEXT, TITLE = "qid", "pid", "text", "title"
RELEVANCE, RANK, SCORE = "relevance", "rank", "score"
QUERY, POSITIVES, NEGATIVES = "query", "positives", "negatives"
ID, EMBEDDING = "id", "embedding"

CORPUS_SCHEMA = pa.schema([(PID, pa.string()), (TEXT, pa.string()), (TITLE, pa.string())])
QUERIES_SCHEMA = pa.schema([(QID, pa.string()), (TEXT, pa.string())])
QRELS_SCHEMA = pa.schema([(QID, pa.string()), (PID, pa.string()), (RELEVANCE, pa.int32())])
RUN_SCHEMA = pa.schema(
    [(QID, pa.string()), (PID, pa.string()), (RANK, pa.int32()), (SCORE, pa.float32())]
)

# One passage of a training group. `score` is the teacher's score, null until `score` fills it.
PASSAGE_TYPE = pa.struct(
    [(PID, pa.string()), (TEXT, pa.string()), (TITLE, pa.string()), (SCORE, pa.float32())]
)
GROUPS_SCHEMA = pa.schema(
    [
        (QID, pa.string()),
        (QUERY, pa.string()),
        (POSITIVES, pa.list_(PASSAGE_TYPE)),
        (NEGATIVES, pa.list_(PASSAGE_TYPE)),
    ]
)


def embeddings_schema(dim: int, dtype: pa.DataType | None = None) -> pa.Schema:
    """Embedding shards: one id and one fixed-size vector per row (float32 unless `dtype`), readable
    without Ray."""
    return pa.schema([(ID, pa.string()), (EMBEDDING, pa.list_(dtype or pa.float32(), dim))])


def passage(pid: str, text: str, title: str = "", score: float | None = None) -> dict:
    """A passage dict of a training group (the Python form of PASSAGE_TYPE)."""
    return {PID: pid, TEXT: text, TITLE: title, SCORE: score}
