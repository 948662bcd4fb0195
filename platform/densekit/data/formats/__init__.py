"""Streaming readers and writers for the text formats at the edges: MS MARCO, BEIR, TREC, DPR/LEAD,
PROD and the Margin-MSE teacher TSV, one module per family over one reader skeleton (`base`).

Readers read bytes and decode line by line (so invalid UTF-8 is reported with its line number) and
yield Arrow record batches of at most `batch_rows` rows and about `batch_bytes` bytes, each with a
`line` column (the 1-based source line of the row). Bad rows go through an `ErrorPolicy`: raise an
InputError naming file, line and what was expected, or count the row under a reason and skip it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa

from densekit.data.formats.base import (
    BATCH_BYTES,
    BATCH_ROWS,
    BOM,
    LINE,
    ErrorPolicy,
    check_id,
    iter_lines,
)
from densekit.data.formats.beir import (
    BEIR_QRELS_HEADER,
    read_beir_corpus,
    read_beir_qrels,
    read_beir_queries,
)
from densekit.data.formats.jsonstream import JSON_CHUNK, MAX_RECORD_CHARS, iter_json_records
from densekit.data.formats.msmarco import DPR_HEADER, read_dpr_tsv, read_id_text, read_msmarco_docs
from densekit.data.formats.training import (
    GROUP_READER_SCHEMA,
    read_dpr_json,
    read_margin_mse_tsv,
    read_prod_json,
)
from densekit.data.formats.trec import read_trec_qrels, read_trec_run
from densekit.data.formats.writers import (
    TsvText,
    beir_corpus_lines,
    beir_qrels_lines,
    beir_queries_lines,
    id_text_lines,
    margin_mse_lines,
    trec_qrels_lines,
    trec_run_lines,
    write_lines,
)

__all__ = [
    "BATCH_BYTES", "BATCH_ROWS", "BEIR_QRELS_HEADER", "BOM", "DPR_HEADER", "GROUP_READER_SCHEMA", "JSON_CHUNK",
    "LINE", "MAX_RECORD_CHARS", "READERS", "ErrorPolicy", "TsvText", "beir_corpus_lines", "beir_qrels_lines",
    "beir_queries_lines", "check_id", "id_text_lines", "iter_json_records", "iter_lines", "margin_mse_lines",
    "read_beir_corpus", "read_beir_qrels", "read_beir_queries", "read_dpr_json", "read_dpr_tsv", "read_id_text",
    "read_margin_mse_tsv", "read_msmarco_docs", "read_prod_json", "read_trec_qrels", "read_trec_run",
    "trec_qrels_lines", "trec_run_lines", "write_lines",
]  # fmt: skip

READERS: dict[str, Callable[..., Iterator[pa.RecordBatch]]] = {
    "msmarco_collection": read_id_text,
    "msmarco_docs": read_msmarco_docs,
    "dpr_tsv": read_dpr_tsv,
    "beir_corpus": read_beir_corpus,
    "beir_queries": read_beir_queries,
    "beir_qrels": read_beir_qrels,
    "trec_qrels": read_trec_qrels,
    "trec_run": read_trec_run,
    "margin_mse_tsv": read_margin_mse_tsv,
    "dpr_json": read_dpr_json,
    "prod_json": read_prod_json,
}
