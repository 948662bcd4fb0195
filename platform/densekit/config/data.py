"""Configs of the foundation steps: import, export, generate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional  # noqa: UP035

from omegaconf import MISSING

from densekit.config.loader import opt, unknown_name
from densekit.errors import ConfigError

# --- foundation steps ------------------------------------------------------------------------------

IMPORT_FORMATS = (
    "msmarco_collection",  # id<TAB>text (collection.tsv, queries.*.tsv)
    "msmarco_docs",  # docid<TAB>url<TAB>title<TAB>body
    "dpr_tsv",  # id<TAB>text<TAB>title with a header (LEAD psgs_w100.tsv)
    "beir",  # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    "beir_corpus",  # corpus.jsonl alone
    "beir_queries",  # queries.jsonl alone
    "beir_qrels",  # qrels/<split>.tsv alone (header query-id corpus-id score)
    "trec_qrels",  # qid 0 docid rel
    "trec_run",  # qid Q0 docid rank score tag
    "margin_mse_tsv",  # pos_score neg_score qid pos_pid neg_pid
    "dpr_json",  # LEAD / DPR biencoder-*.json
    "prod_json",  # PROD training JSON (query_id, pos_id, neg_id, ...)
)


@dataclass
class ImportConfig:
    """Import a text-format file (or a BEIR folder) into densekit's Parquet tables."""

    format: str = opt(MISSING, f"input format: one of {', '.join(IMPORT_FORMATS)}")
    path: str = opt(MISSING, "input file (a folder for format=beir)")
    output: str = opt(MISSING, "output table directory (format=beir: a folder of tables)")
    corpus: Optional[str] = opt(
        None, "imported corpus table: checks pids of qrels/runs/training rows and fills passage text"
    )
    queries: Optional[str] = opt(
        None, "imported queries table: checks qids and fills query text of training rows"
    )
    kind: Optional[Literal["corpus", "queries"]] = opt(
        None, "msmarco_collection only: whether the file holds passages or queries (default corpus)"
    )
    pid_offset: int = opt(
        0, "dpr_json only: added to integer passage ids (LEAD biencoder json: 1, psgs_w100.tsv is 1-based)"
    )
    on_error: Literal["raise", "skip"] = opt(
        "raise", "bad rows and unknown ids: raise (default) or skip and count them in the manifest"
    )
    max_logged_errors: int = opt(20, "with on_error=skip, log at most this many skipped rows")
    batch_rows: int = opt(
        8192, "rows per record batch read from the input (training files: passages); bounds memory"
    )
    batch_bytes: int = opt(32 << 20, "bytes of input text per record batch at most (about)")
    rows_per_part: int = opt(1_000_000, "rows per Parquet part file")
    lookup_cache: Optional[str] = opt(
        None, "folder to keep the id lookups of corpus/queries in, for reuse (default: built in the output, then removed)"
    )
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.format not in IMPORT_FORMATS:
            raise ConfigError(unknown_name("format", self.format, IMPORT_FORMATS))
        if self.kind is not None and self.format != "msmarco_collection":
            raise ConfigError(f"kind={self.kind} applies to format=msmarco_collection only")
        if self.format == "margin_mse_tsv" and (self.corpus is None or self.queries is None):
            raise ConfigError("format=margin_mse_tsv needs corpus=<table> and queries=<table> for the texts")
        if self.format == "prod_json" and self.corpus is None:
            raise ConfigError("format=prod_json needs corpus=<table> for the passage texts")
        if self.format == "beir" and (self.corpus or self.queries):
            raise ConfigError("format=beir imports its own corpus and queries; leave corpus/queries unset")
        if self.batch_rows < 1 or self.batch_bytes < 1 or self.rows_per_part < 1:
            raise ConfigError("batch_rows, batch_bytes and rows_per_part must be >= 1")


EXPORT_FORMATS = ("trec_run", "trec_qrels", "margin_mse_tsv", "msmarco_collection", "beir", "npy", "faiss")


@dataclass
class ExportConfig:
    """Export a densekit table to a format at the edges (TREC run/qrels, teacher TSV, .npy, one FAISS index, ...)."""

    format: str = opt(MISSING, f"output format: one of {', '.join(EXPORT_FORMATS)}")
    input: str = opt(
        MISSING, "table directory to export (beir: a folder with corpus/, queries/, qrels/<split>/; "
        "npy: an embeddings table; faiss: an index folder)"
    )
    output: str = opt(
        MISSING, "output file (a folder for beir; npy: embeddings.npy + ids.txt; faiss: index.faiss + ids.txt)"
    )
    tag: str = opt("densekit", "run tag (trec_run)")
    overwrite: bool = opt(False, "replace an existing output file")

    def validate(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(unknown_name("format", self.format, EXPORT_FORMATS))
        if not self.tag or any(c.isspace() for c in self.tag):
            raise ConfigError(f"tag={self.tag!r}: a run tag must be non-empty, without whitespace")


@dataclass
class GenerateConfig:
    """Write a generated retrieval task: corpus, queries, train and dev qrels (BEIR-like tables)."""

    output: str = opt(MISSING, "output folder (corpus/, queries/, qrels/train/, qrels/dev/)")
    seed: int = opt(0, "random seed: the same seed and sizes give the same files")
    num_docs: int = opt(2000, "documents in the corpus")
    num_train_queries: int = opt(8000, "training queries (each about one subject, see doc_variants)")
    num_dev_queries: int = opt(300, "dev queries (each about one subject, all its documents judged)")
    num_topics: int = opt(40, "topics; documents of one topic share topic words (hard negatives)")
    num_concepts: int = opt(
        4000, "concepts, split among topics; each has a document word and a query synonym"
    )
    concepts_per_doc: int = opt(8, "concepts a document is about (drawn from its topic's concepts)")
    concepts_per_query: int = opt(4, "concepts of its document a query names")
    topic_words: int = opt(12, "words per topic, used by its documents and queries alike")
    noise_words: int = opt(150, "filler words shared by everything (Zipf-distributed)")
    doc_length: int = opt(40, "words per document")
    query_length: int = opt(8, "words per query")
    concept_share: float = opt(0.4, "share of document words that are its concepts' words")
    topic_share: float = opt(0.3, "share of document words that are topic words (the rest is filler)")
    synonym_rate: float = opt(
        0.95, "chance that a query names a concept by its synonym, a word documents never use"
    )
    doc_variants: int = opt(
        1, "documents written about each subject (same topic and concepts, different words); "
        "a query about a subject is relevant to all of them. num_docs must be a multiple"
    )
    train_judged: int = opt(
        0, "relevant documents judged per training query (0: all), always the same variants of a subject. "
        "Fewer than doc_variants leaves the others never judged, like MS MARCO's sparse labels; dev queries judge all"
    )
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        sizes = ("num_docs", "num_train_queries", "num_dev_queries", "num_topics", "num_concepts",
                 "concepts_per_doc", "concepts_per_query", "topic_words", "noise_words", "doc_length", "query_length",
                 "doc_variants")
        bad = [k for k in sizes if getattr(self, k) < 1]
        if bad:
            raise ConfigError(f"generate: {', '.join(bad)} must be >= 1")
        if self.num_concepts < self.num_topics:
            raise ConfigError(f"generate: num_concepts={self.num_concepts} must be >= num_topics={self.num_topics}")
        if self.query_length < self.concepts_per_query + 1:
            raise ConfigError("generate: query_length must exceed concepts_per_query (a topic word is added)")
        if not 0 <= self.synonym_rate <= 1 or min(self.concept_share, self.topic_share) < 0 \
                or self.concept_share + self.topic_share > 1:
            raise ConfigError("generate: synonym_rate in [0, 1]; concept_share, topic_share >= 0 with sum <= 1")
        if self.num_docs % self.doc_variants:
            raise ConfigError(f"generate: num_docs={self.num_docs} must be a multiple of doc_variants={self.doc_variants}")
        if self.train_judged < 0:
            raise ConfigError(f"generate: train_judged={self.train_judged} must be >= 0 (0: all relevant documents)")
