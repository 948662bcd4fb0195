"""Typed configs: one dataclass per step, loaded from YAML plus dotted `key=value` overrides.

OmegaConf (structured configs) is used here and only here: `load_config` merges the dataclass
defaults, the YAML file and the overrides, checks keys and types, and returns a plain dataclass
instance. Each field carries a one-line `help` that `densekit <step> --help` prints.

Conventions: required values use `MISSING`; nested groups are dataclasses; anything chosen by name
(models, losses, index types) is a string key into a registry dict, checked by `validate()`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional  # noqa: UP035

from omegaconf import MISSING, OmegaConf, open_dict
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from densekit.errors import ConfigError

__all__ = ["MISSING", "load_config", "describe_fields", "opt", "ConfigError"]


def opt(default: Any = MISSING, help: str = "") -> Any:
    """A dataclass field with a default (copied per instance when mutable) and a one-line help."""
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata={"help": help})
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# --- shared pieces ---------------------------------------------------------------------------------


@dataclass
class ResourcesConfig:
    """Where and how wide a step runs. Deliberately not called ScalingConfig (Ray has one)."""

    num_workers: int = opt(1, "Ray workers / actors for this step (pool size, DDP world size)")
    use_gpu: bool = opt(False, "give each worker a GPU (num_gpus=1 per actor / worker)")
    cpus_per_worker: float = opt(1.0, "CPUs reserved per worker or actor")
    gpus_per_worker: float = opt(1.0, "GPUs per worker when use_gpu (fractions share a GPU)")
    address: Optional[str] = opt(
        None, "Ray address; None = the job's cluster under `ray job submit`, else a local Ray"
    )


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
            raise ConfigError(_unknown_name("format", self.format, IMPORT_FORMATS))
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


EXPORT_FORMATS = ("trec_run", "trec_qrels", "margin_mse_tsv", "msmarco_collection", "beir")


@dataclass
class ExportConfig:
    """Export a densekit table to a text format at the edges (TREC run/qrels, teacher TSV, ...)."""

    format: str = opt(MISSING, f"output format: one of {', '.join(EXPORT_FORMATS)}")
    input: str = opt(MISSING, "table directory to export (for beir: a folder with corpus/, queries/, qrels/<split>/)")
    output: str = opt(MISSING, "output file (a folder for beir)")
    tag: str = opt("densekit", "run tag (trec_run)")
    overwrite: bool = opt(False, "replace an existing output file")

    def validate(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(_unknown_name("format", self.format, EXPORT_FORMATS))
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


# --- models and losses (shared by train, score, encode) ---------------------------------------------

MODEL_KINDS = ("bi_encoder", "colbert", "cross_encoder")


@dataclass
class ModelConfig:
    """Which model to load or build, and how to initialise a student (densekit.models.model_from_config).

    Spec fields left null keep the saved model's values (densekit_model.json or the
    sentence-transformers files); for a plain Hugging Face encoder they define the new model.
    """

    path: str = opt(MISSING, "model directory: a densekit save, a sentence-transformers or a Hugging Face encoder")
    kind: Optional[str] = opt(None, "bi_encoder | colbert | cross_encoder; null = the saved kind, else bi_encoder")
    pooling: Optional[str] = opt(None, "bi-encoder pooling: cls | mean")
    normalize: Optional[bool] = opt(None, "L2-normalise bi-encoder embeddings")
    similarity: Optional[str] = opt(None, "dot | cosine (cosine implies normalised embeddings)")
    head_dim: Optional[int] = opt(None, "bi-encoder linear head output size (new heads start random)")
    head_layernorm: Optional[bool] = opt(None, "LayerNorm after the head (STAR's RobertaDot)")
    shared: Optional[bool] = opt(None, "one tower for queries and passages (false: separate towers)")
    max_query_length: Optional[int] = opt(None, "query tokens (default 32)")
    max_passage_length: Optional[int] = opt(None, "passage tokens (default 256)")
    colbert_dim: Optional[int] = opt(None, "ColBERT compression size (default 128)")
    query_augmentation: Optional[bool] = opt(None, "ColBERT: pad queries with [MASK] to max_query_length")
    student_layers: Optional[typing.List[int]] = opt(  # noqa: UP006
        None, "build a student keeping these layers of `path` (0 = first transformer layer), e.g. [0, 11]"
    )
    student_num_layers: Optional[int] = opt(None, "build a student keeping the first n layers of `path` (PROD)")
    project_to: Optional[str] = opt(
        None, "build a bi-encoder from `path` with a linear projection to this teacher's embedding size"
    )
    dropout: Optional[float] = opt(None, "set every dropout probability of the encoder (e.g. 0.0)")

    def validate(self) -> None:
        if self.kind is not None and self.kind not in MODEL_KINDS:
            raise ConfigError(_unknown_name("model kind", self.kind, MODEL_KINDS))
        if self.pooling is not None and self.pooling not in ("cls", "mean"):
            raise ConfigError(_unknown_name("pooling", self.pooling, ("cls", "mean")))
        if self.similarity is not None and self.similarity not in ("dot", "cosine"):
            raise ConfigError(_unknown_name("similarity", self.similarity, ("dot", "cosine")))
        inits = [n for n in ("student_layers", "student_num_layers", "project_to") if getattr(self, n) is not None]
        if len(inits) > 1:
            raise ConfigError(f"model: set only one of {', '.join(inits)}")


@dataclass
class LossConfig:
    """One term of the training objective: `losses: {<name>: {weight, params}}`, names in densekit.losses.LOSSES."""

    weight: float = opt(1.0, "weight of this loss in the sum")
    params: typing.Dict[str, Any] = opt({}, "the loss's own parameters, checked when the objective is built")  # noqa: UP006
# --- retrieval steps: encode, index, search, evaluate, mine, score -------------------------------

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
STORAGE_DTYPES = ("float32", "float16")
TEACHER_KINDS = ("auto", "bi_encoder", "colbert", "cross_encoder")
# FAISS factory components densekit builds and tests; anything else FAISS accepts still works, but
# an unknown leading component is far more often a typo ("IFV100,Flat") than a new index type.
INDEX_TYPES = ("Flat", "IVF", "HNSW", "PQ", "OPQ", "SQ", "PCA", "PCAR", "IMI", "LSH", "RR", "IDMap")


@dataclass
class EncodeConfig:
    """Encode a corpus (or query) table into embedding shards with Ray Data model actors."""

    model: str = opt(MISSING, "model directory: a densekit checkpoint or a HF / sentence-transformers dir")
    input: str = opt(MISSING, "corpus table (pid, text, title) or queries table (qid, text)")
    output: str = opt(MISSING, "embeddings table: part-NNNNN.parquet shards (id, embedding) + manifest")
    kind: Literal["auto", "passages", "queries"] = opt(
        "auto", "which tower to use; auto: queries if the input has a qid column, else passages"
    )
    title: Literal["model", "prepend", "ignore"] = opt(
        "model",
        "passage titles: model (the model's own title handling), prepend (title + ' ' + text), ignore",
    )
    batch_size: int = opt(128, "texts per forward pass (padded to the longest text of the batch)")
    block_rows: int = opt(4096, "rows handed to an actor at once; sorted by length inside, then batched")
    rows_per_shard: int = opt(
        100_000, "input rows per output shard (shard i = rows [i*n, (i+1)*n) of the input, in order)"
    )
    max_length: Optional[int] = opt(None, "override the model's max token length")
    precision: str = opt("auto", f"autocast on CUDA: one of {', '.join(PRECISIONS)} (auto = fp16)")
    storage_dtype: str = opt("float32", "embedding dtype on disk: float32 or float16")
    resources: ResourcesConfig = opt(ResourcesConfig, "actor pool: num_workers actors (GPU each if use_gpu)")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(_unknown_name("precision", self.precision, PRECISIONS))
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(_unknown_name("storage_dtype", self.storage_dtype, STORAGE_DTYPES))
        for name in ("batch_size", "block_rows", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class IndexConfig:
    """Build a sharded FAISS index: one Ray task per embedding shard, trained types trained once."""

    embeddings: str = opt(MISSING, "embeddings table written by `densekit encode`")
    output: str = opt(MISSING, "index directory: shards/shard-NNNNN/{index.faiss,ids.parquet} + manifest")
    factory: str = opt("Flat", "FAISS index_factory string: Flat, IVF4096,Flat, IVF4096,PQ64, HNSW32, ...")
    metric: Literal["auto", "ip", "l2"] = opt(
        "auto", "auto: the metric recorded by encode (inner product for dot/cosine models)"
    )
    train_size: int = opt(
        100_000, "vectors sampled (evenly over the shards) to train IVF/PQ/... once; all shards share it"
    )
    seed: int = opt(0, "seed of the training sample and of k-means")
    add_batch_rows: int = opt(65_536, "vectors read and added per step by a shard builder")
    use_gpu_faiss: bool = opt(False, "train (and add) on GPU with faiss-gpu when it is importable")
    resources: ResourcesConfig = opt(ResourcesConfig, "cpus_per_worker: threads per shard-builder task")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        head = self.factory.split(",")[0].strip()
        if not any(head.startswith(t) for t in INDEX_TYPES):
            letters = "".join(itertools.takewhile(str.isalpha, head)) or head
            raise ConfigError(
                f"factory '{self.factory}': " + _unknown_name("index type", letters, INDEX_TYPES)
            )
        if self.train_size < 1 or self.add_batch_rows < 1:
            raise ConfigError("train_size and add_batch_rows must be >= 1")


@dataclass
class SearchConfig:
    """Search a sharded index with query embeddings (or queries + a model); write a run."""

    index: str = opt(MISSING, "index directory written by `densekit index`")
    output: str = opt(MISSING, "run table directory (qid, pid, rank, score) + run.trec")
    query_embeddings: Optional[str] = opt(None, "query embeddings table (from `densekit encode`)")
    queries: Optional[str] = opt(None, "queries table (qid, text); encoded with `model` first")
    model: Optional[str] = opt(None, "query encoder, with `queries` (its embeddings go to output/query_embeddings)")
    asymmetric: bool = opt(
        False,
        "allow a query encoder other than the model that built the index (e.g. a distilled student "
        "querying a teacher's index); without it a model mismatch is an error",
    )
    k: int = opt(100, "documents retrieved per query")
    batch_size: int = opt(1024, "queries sent to the search actors at once")
    nprobe: Optional[int] = opt(None, "IVF: inverted lists visited per query (FAISS default 1)")
    ef_search: Optional[int] = opt(None, "HNSW: efSearch (FAISS default 16)")
    mmap: bool = opt(True, "memory-map shard files where the index type allows (Flat, IVF lists)")
    max_restarts: int = opt(2, "restart a dead search actor (and retry its call) this many times")
    encode_batch_size: int = opt(128, "with queries + model: texts per forward pass")
    tag: str = opt("densekit", "run tag written in the TREC file")
    resources: ResourcesConfig = opt(ResourcesConfig, "num_workers: search actors, each holding some shards")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        has_emb = self.query_embeddings is not None
        has_text = self.queries is not None or self.model is not None
        if has_emb == has_text or (has_text and (self.queries is None or self.model is None)):
            raise ConfigError(
                "give either query_embeddings=..., or both queries=... and model=... (not both ways)"
            )
        if self.k < 1 or self.batch_size < 1:
            raise ConfigError("k and batch_size must be >= 1")
        if not self.tag or any(c.isspace() for c in self.tag):
            raise ConfigError(f"tag {self.tag!r} must be non-empty without whitespace (TREC run files)")


@dataclass
class EvaluateConfig:
    """Evaluate a run against qrels with pytrec_eval; optionally compare with a baseline run."""

    run: str = opt(MISSING, "run table (qid, pid, rank, score), e.g. the output of `densekit search`")
    qrels: str = opt(MISSING, "qrels table (qid, pid, relevance)")
    output: str = opt(MISSING, "output directory: metrics.json, per_query/ table, comparison.json")
    metrics: list[str] = opt(
        ["mrr@10", "ndcg@10", "recall@100", "recall@1000", "map"],
        "measures: mrr[@k], ndcg[@k], recall@k, map[@k], p@k, r_prec",
    )
    relevance_level: int = opt(1, "binary measures (MRR, recall, MAP, P) count relevance >= this")
    baseline: Optional[str] = opt(None, "a second run: paired t-test and randomisation test per measure")
    permutations: int = opt(10_000, "random sign flips of the randomisation test")
    seed: int = opt(0, "seed of the randomisation test")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        from densekit.metrics import parse_metric  # light: no Ray, no torch

        if not self.metrics:
            raise ConfigError("metrics is empty")
        for m in self.metrics:
            parse_metric(m)


@dataclass
class MineConfig:
    """Mine hard negatives from a run: drop judged-relevant documents, keep a rank window."""

    run: str = opt(MISSING, "run table (qid, pid, rank, score) of the retriever that mines")
    qrels: str = opt(MISSING, "qrels table: positives and every judged-relevant pid (never a negative)")
    queries: str = opt(MISSING, "queries table (qid, text)")
    corpus: str = opt(MISSING, "corpus table (pid, text, title) for the passage texts")
    output: str = opt(MISSING, "training groups table (qid, query, positives, negatives)")
    min_rank: int = opt(1, "first rank (1-based) negatives are taken from")
    max_rank: int = opt(200, "last rank negatives are taken from")
    num_negatives: int = opt(30, "negatives per query")
    strategy: Literal["sample", "top"] = opt("sample", "sample: uniform without replacement; top: best ranked")
    seed: int = opt(0, "seed of the sampling (per query: the same qid gets the same negatives)")
    positive_level: int = opt(1, "qrels with relevance >= this are the group's positives")
    min_negatives: int = opt(1, "queries with fewer negatives in the window are dropped (and counted)")
    run_scores: bool = opt(
        False,
        "store the run's score of every passage as its teacher `score` (the mining retriever is the teacher: "
        "Margin-MSE / KL from a DE teacher without a `score` step); positives the run missed are dropped",
    )
    rows_per_part: int = opt(100_000, "groups per Parquet part")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if not 1 <= self.min_rank <= self.max_rank:
            raise ConfigError(f"need 1 <= min_rank <= max_rank, got {self.min_rank}..{self.max_rank}")
        if self.num_negatives < 1 or self.min_negatives < 0:
            raise ConfigError("num_negatives must be >= 1 and min_negatives >= 0")
        if self.positive_level < 1:
            raise ConfigError("positive_level must be >= 1 (relevance 0 means judged not relevant)")


@dataclass
class TeacherConfig:
    """One teacher of `densekit score`."""

    model: str = opt(MISSING, "teacher model directory (densekit checkpoint or HF / sentence-transformers)")
    kind: str = opt("auto", f"one of {', '.join(TEACHER_KINDS)}; auto: as saved in the checkpoint")
    max_length: Optional[int] = opt(None, "override the teacher's max token length")

    def validate(self) -> None:
        if self.kind not in TEACHER_KINDS:
            raise ConfigError(_unknown_name("teacher kind", self.kind, TEACHER_KINDS))


@dataclass
class ScoreConfig:
    """Teacher scores for training groups (cross-encoder, ColBERT MaxSim, bi-encoder dot; ensembles)."""

    groups: str = opt(MISSING, "training groups table (e.g. from `densekit mine`)")
    output: str = opt(MISSING, "groups table with every passage's `score` filled in")
    teachers: list[TeacherConfig] = opt([], "teachers; with several, the score is their mean (ensemble)")
    batch_size: int = opt(64, "query-passage pairs per forward pass")
    precision: str = opt("auto", f"autocast on CUDA: one of {', '.join(PRECISIONS)} (auto = fp16)")
    margin_mse_tsv: Optional[str] = opt(
        None, "also write the Margin-MSE teacher TSV here (pos_score neg_score qid pos_pid neg_pid)"
    )
    resources: ResourcesConfig = opt(ResourcesConfig, "num_workers: actors per teacher (GPU each if use_gpu)")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if not self.teachers:
            raise ConfigError("teachers is empty: give at least one {model: DIR}")
        if self.precision not in PRECISIONS:
            raise ConfigError(_unknown_name("precision", self.precision, PRECISIONS))


# --- loading ---------------------------------------------------------------------------------------


def _unknown_name(what: str, value: str, choices: typing.Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{value}'; expected one of: {', '.join(choices)}.{hint}"


def _field_names(cls: type, dotted: str) -> list[str]:
    """Field names valid at the dotted prefix `dotted` of dataclass `cls` (for did-you-mean)."""
    t: Any = cls
    for part in [p for p in dotted.split(".") if p]:
        if typing.get_origin(t) in (dict, typing.Dict):  # noqa: UP006
            t = typing.get_args(t)[1]  # `part` is a mapping key: step into the value type
        elif isinstance(t, type) and dataclasses.is_dataclass(t):
            t = typing.get_type_hints(t).get(part)
        else:
            return []
        t = _strip_optional(t)
    return [f.name for f in dataclasses.fields(t)] if dataclasses.is_dataclass(t) else []


def _strip_optional(t: Any) -> Any:
    if typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def _unwrap(t: Any) -> Any:
    """Optional[X] -> X; Dict[str, X] -> X (so dotted paths walk into mapping values)."""
    origin = typing.get_origin(t)
    if origin is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else t
    if origin in (dict, typing.Dict):  # noqa: UP006
        return _unwrap(typing.get_args(t)[1])
    return t


# Names users bring from Hugging Face's Trainer and sentence-transformers' fit, and densekit's own.
FOREIGN_NAMES = {
    "learning_rate": "optim.lr",
    "lr_scheduler_type": "optim (linear warm-up and decay, the only schedule)",
    "per_device_train_batch_size": "optim.batch_size (queries per step over ALL workers)",
    "train_batch_size": "optim.batch_size",
    "gradient_accumulation_steps": "optim.grad_accum",
    "num_train_epochs": "optim.max_steps (training counts optimizer steps, not epochs)",
    "epochs": "optim.max_steps (training counts optimizer steps, not epochs)",
    "warmup_ratio": "optim.warmup_steps (a number of steps)",
    "warmup_steps": "optim.warmup_steps",
    "weight_decay": "optim.weight_decay",
    "adam_epsilon": "optim.eps",
    "max_grad_norm": "optim.max_grad_norm",
    "seed": "optim.seed",
    "fp16": "optim.amp=fp16",
    "bf16": "optim.amp=bf16",
    "output_dir": "output",
    "model_name_or_path": "model.path",
    "max_seq_length": "model.max_passage_length / model.max_query_length",
    "eval_steps": "eval.every",
    "evaluation_steps": "eval.every",
    "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints",
    "logging_steps": "progress_every_s (seconds between progress lines)",
    "num_workers": "resources.num_workers",
    "use_gpu": "resources.use_gpu",
}


def _foreign_hint(leaf: str, names: list[str], parent: str) -> str:
    """A pointer to densekit's key for a Hugging Face / sentence-transformers name, if one applies."""
    target = FOREIGN_NAMES.get(leaf)
    if target is None:
        return ""
    head = target.split(" ", 1)[0].split(".", 1)[0].split("=", 1)[0]
    if names and head not in names:
        return ""  # that key lives in another step's config
    return f" ('{leaf}' is a Hugging Face / sentence-transformers name: densekit's is {target}.)"


def _explain(e: OmegaConfBaseException, cls: type) -> str:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or ""
    msg = getattr(e, "msg", None) or str(e).splitlines()[0]
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and "not in" in msg:
        parent, _, leaf = str(key).rpartition(".")
        # Mapping-valued groups (losses.<name>.params) list their own keys.
        names = _field_names(cls, parent)
        close = difflib.get_close_matches(leaf, names, n=1)
        hint = _foreign_hint(leaf, _field_names(cls, ""), parent) or (
            f" Did you mean '{close[0]}'?" if close else ""
        )
        where = f"in '{parent}'" if parent else f"in {cls.__name__}"
        return f"unknown config key '{key}' {where}.{hint} Valid keys: {', '.join(names)}"
    if isinstance(e, MissingMandatoryValue):
        return f"missing required value '{key}' (set it in the YAML or as {key}=...)"
    if isinstance(e, (ValidationError, ConfigTypeError)):
        first = msg.splitlines()[0]
        return f"invalid value for '{key}': {first}"
    return f"{key}: {msg}" if key else msg


def missing_keys(obj: Any, prefix: str = "") -> list[str]:
    out = []
    keys = range(len(obj)) if OmegaConf.is_list(obj) else list(obj.keys())
    for k in keys:
        node = obj._get_node(k)
        name = f"{prefix}{k}"
        if OmegaConf.is_missing(obj, k):
            out.append(name)
        elif OmegaConf.is_config(node):
            out += missing_keys(node, name + ".")
    return out


def load_config(
    cls: type,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    allow_missing: bool = False,
) -> Any:
    """Load a step config: dataclass defaults < YAML file < dotted `key=value` overrides.

    Fails with a ConfigError, before any work starts, on an unknown key (with a did-you-mean
    suggestion), a value of the wrong type, a missing required value, or an unreadable file.

    Returns:
        An instance of `cls` (plain dataclasses all the way down). With `allow_missing` (config
        checks, `--dry-run`), required values may stay unset and the merged, type-checked
        OmegaConf object is returned instead.
    """
    layers = [OmegaConf.structured(cls)]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = OmegaConf.load(p)
        except Exception as e:  # yaml.YAMLError and friends, with line and column
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not OmegaConf.is_dict(loaded):
            raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
        layers.append(loaded)
    removals = [item[1:].split("=", 1)[0] for item in overrides or [] if item.startswith("~")]
    overrides = [item for item in overrides or [] if not item.startswith("~")]
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (or ~key to remove an entry)")
    if removals:
        try:
            layers = [OmegaConf.merge(*layers)]
        except OmegaConfBaseException as e:
            raise ConfigError((f"{path}: " if path else "") + _explain(e, cls)) from None
        for key in removals:
            _remove(layers[0], key)
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override: {e}") from e
    try:
        merged = OmegaConf.merge(*layers)
        if allow_missing:
            return merged
        missing = missing_keys(merged)
        if missing:
            raise ConfigError(
                "missing required value(s): "
                + ", ".join(missing)
                + (f" (in {path})" if path else "")
                + "; set them in the YAML or as key=value"
            )
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        from_override = any(o.split("=", 1)[0] == key for o in overrides or [])
        where = "override: " if from_override else (f"{path}: " if path else "")
        raise ConfigError(where + _explain(e, cls)) from None
    validate_tree(obj)
    return obj


def _remove(cfg: Any, key: str) -> None:
    """`~key`: drop an entry of a mapping (a loss of `losses`, a setting of a method stage's `set`).
    A dataclass field cannot be removed: it always has a value (set it instead)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not OmegaConf.is_dict(parent) or leaf not in parent:
        raise ConfigError(f"override '~{key}': there is no '{key}' to remove")
    if dataclasses.is_dataclass(OmegaConf.get_type(parent)):
        raise ConfigError(f"override '~{key}': '{leaf}' is a setting of {OmegaConf.get_type(parent).__name__}, "
                          f"it cannot be removed (set it: {key}=...)")
    with open_dict(parent):
        del parent[leaf]


def validate_tree(obj: Any) -> None:
    """Call `validate()` on every dataclass in the tree, children first."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            validate_tree(getattr(obj, f.name))
        if hasattr(obj, "validate"):
            obj.validate()
    elif isinstance(obj, dict):
        for v in obj.values():
            validate_tree(v)
    elif isinstance(obj, list):
        for v in obj:
            validate_tree(v)


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, help) of every field, recursing into nested dataclasses."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = _unwrap(hints[f.name])
        name = prefix + f.name
        if isinstance(t, type) and dataclasses.is_dataclass(t) and typing.get_origin(hints[f.name]) not in (
            dict,
            typing.Dict,  # noqa: UP006
        ):
            rows.append((name, t.__name__, "", f.metadata.get("help", "")))
            rows += describe_fields(t, name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = "(required)" if f.default == MISSING else repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def _type_name(t: Any) -> str:
    s = str(t).replace("typing.", "")
    return getattr(t, "__name__", s) if typing.get_origin(t) is None else s


# --- train and tune --------------------------------------------------------------------------------


@dataclass
class TrainDataConfig:
    """Training data: groups (query, positives, negatives) or queries only."""

    train: str = opt(MISSING, "training groups table (or a queries table when group_size=0)")
    group_size: int = opt(8, "passages per query: 1 positive + group_size-1 negatives; 0 = queries only")
    negatives: Literal["random", "descend"] = opt(
        "random", "negatives per epoch: a seeded random sample, or the hardest first (stored order)"
    )
    positive: Literal["first", "random"] = opt("first", "which judged positive a group uses")
    teacher_scores: bool = opt(False, "read offline teacher scores from the groups (after `score`)")
    teacher_embeddings: Optional[str] = opt(
        None,
        "the teacher's query embeddings (an `encode` output of the training queries, keyed by qid): "
        "embedding_mse reads them instead of running the teacher at every step",
    )
    source: Literal["arrow", "ray_data"] = opt("arrow", "read the table with pyarrow or Ray Data")
    shuffle_window: int = opt(100_000, "rows shuffled together (memory bound of the reader)")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and decay."""

    lr: float = opt(2e-5, "peak learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    eps: float = opt(1e-8, "AdamW epsilon")
    batch_size: int = opt(32, "queries per micro-batch over ALL workers (divides by num_workers)")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    max_steps: int = opt(1000, "optimizer steps to train")
    warmup_steps: int = opt(0, "linear warm-up steps (then linear decay to 0 at max_steps)")
    max_grad_norm: Optional[float] = opt(2.0, "clip the gradient norm (null: no clipping)")
    amp: Literal["auto", "off", "fp16", "bf16"] = opt("auto", "mixed precision on CUDA (auto: bf16 if supported)")
    seed: int = opt(42, "seed of weights init, data order and negative sampling")

    def validate(self) -> None:
        bad = []
        if not self.lr > 0 or self.lr == float("inf"):
            bad.append(f"optim.lr={self.lr} (a positive number, e.g. 2e-5)")
        for name in ("batch_size", "grad_accum", "max_steps"):
            if getattr(self, name) < 1:
                bad.append(f"optim.{name}={getattr(self, name)} (at least 1)")
        if not 0 <= self.warmup_steps <= max(self.max_steps, 0):
            bad.append(f"optim.warmup_steps={self.warmup_steps} (0 .. max_steps={self.max_steps})")
        if self.weight_decay < 0 or not self.eps > 0:
            bad.append(f"optim.weight_decay={self.weight_decay} / optim.eps={self.eps} (>= 0 / > 0)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            bad.append(f"optim.max_grad_norm={self.max_grad_norm} (> 0, or null for no clipping)")
        if bad:
            raise ConfigError("invalid training settings: " + "; ".join(bad))


@dataclass
class EvalConfig:
    """Periodic dev evaluation through the retrieval core (rank 0), reported to Ray Train."""

    every: int = opt(0, "evaluate every N optimizer steps and at the end (0: never)")
    queries: Optional[str] = opt(None, "dev queries table")
    qrels: Optional[str] = opt(None, "dev qrels table")
    corpus: Optional[str] = opt(None, "corpus table encoded with the current student")
    index: Optional[str] = opt(
        None, "a fixed index (asymmetric: documents encoded by a teacher); instead of `corpus`"
    )
    metric: str = opt("ndcg@10", "metric that picks the best checkpoint (mrr@10, ndcg@10, recall@100, ...)")
    k: int = opt(100, "documents retrieved per query")
    batch_size: int = opt(128, "encoding batch size")
    max_queries: Optional[int] = opt(None, "evaluate on the first N dev queries only")


@dataclass
class RetrievedConfig:
    """Retrieved candidates (ADORE): each step retrieves the top-k from a fixed document index."""

    index: Optional[str] = opt(None, "the fixed document index (a densekit `index` output)")
    k: int = opt(200, "documents retrieved per query each step")
    append: Literal["missing", "if_none"] = opt(
        "missing", "append positives not retrieved: all missing ones, or only when none was retrieved"
    )
    num_actors: int = opt(1, "search actors serving the index")


@dataclass
class TrainConfig:
    """Train a student (any method: a config of models, candidates and weighted losses)."""

    model: ModelConfig = opt(ModelConfig, "the student")
    teacher: Optional[ModelConfig] = opt(
        None, "an online teacher, frozen unless a loss trains it jointly (offline: data.teacher_scores)"
    )
    data: TrainDataConfig = opt(TrainDataConfig, "training data")
    candidates: Literal["auto", "global", "group", "retrieved"] = opt(
        "auto", "what each query is scored against (auto: what the losses need)"
    )
    train_query_encoder_only: bool = opt(
        False, "freeze the passage tower (ADORE, query-encoder distillation)"
    )
    losses: Dict[str, LossConfig] = opt({}, "loss name -> {weight, params}; the total is the weighted sum")  # noqa: UP006
    optim: OptimConfig = opt(OptimConfig, "optimizer and schedule")
    eval: EvalConfig = opt(EvalConfig, "periodic evaluation")
    retrieved: RetrievedConfig = opt(RetrievedConfig, "ADORE's fixed index")
    checkpoint_every: int = opt(0, "checkpoint every N optimizer steps (0: at evaluations and the end)")
    progress_every_s: float = opt(
        60.0, "rank 0 logs a progress line (step, local loss, time left) this often between checkpoints; 0: off"
    )
    keep_checkpoints: int = opt(2, "checkpoints kept (the best by eval.metric and the latest)")
    max_failures: int = opt(2, "worker failures survived by resuming from the last checkpoint")
    resources: ResourcesConfig = opt(ResourcesConfig, "workers")
    output: str = opt(MISSING, "output folder: model/ (final), best/, checkpoints/, metrics.jsonl")
    overwrite: bool = opt(False, "start over even if the output holds a run of this config")
    report: bool = opt(False, "at the end, write report.md, report.json and quality_vs_speed.png (densekit report)")

    def validate(self) -> None:
        if not self.losses:
            raise ConfigError("train: no losses configured (e.g. losses: {contrastive: {weight: 1}})")
        if self.optim.batch_size % self.resources.num_workers:
            raise ConfigError(
                f"optim.batch_size={self.optim.batch_size} must divide by "
                f"resources.num_workers={self.resources.num_workers}"
            )
        if self.eval.every and not (self.eval.queries and self.eval.qrels and (self.eval.corpus or self.eval.index)):
            raise ConfigError("eval.every is set: give eval.queries, eval.qrels and eval.corpus (or eval.index)")


# --- reports (densekit report, and the end of train / tune / run) -----------------------------------


@dataclass
class QuerySpeedConfig:
    """How query-encoding speed is measured: identically for every model of one report."""

    enabled: bool = opt(True, "time each model's query encoding (false: quality only)")
    queries: Optional[str] = opt(
        None, "queries table timed (default: the queries of the first evaluated model)"
    )
    num_queries: int = opt(512, "queries timed: the first N of the table (all models get the same)")
    batch_size: int = opt(64, "queries per forward pass (tokenisation included in the time)")
    threads: int = opt(1, "torch CPU threads while timing (1: steadiest on a shared machine)")
    warmup: int = opt(1, "untimed passes over the queries per model first")
    repeats: int = opt(5, "timed passes per model, interleaved across models; the fastest counts")
    device: str = opt("cpu", "cpu or cuda (CUDA time includes a synchronize per batch)")

    def validate(self) -> None:
        if min(self.num_queries, self.batch_size, self.threads, self.repeats) < 1 or self.warmup < 0:
            raise ConfigError("speed: num_queries, batch_size, threads and repeats must be >= 1, warmup >= 0")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(_unknown_name("speed.device", self.device, ("cpu", "cuda")))


@dataclass
class ReportConfig:
    """A report of a method run, a train output or a tune output: report.md, report.json, a PNG."""

    run: str = opt(MISSING, "a method run folder (method-<name>.json), a train output or a tune output")
    output: Optional[str] = opt(None, "folder for report.md, report.json, quality_vs_speed.png (default: `run`)")
    title: Optional[str] = opt(None, "report title (default: the method's name or the folder name)")
    metric: str = opt("ndcg@10", "quality measure on the plot's y axis (a key of the metrics.json files)")
    speed: QuerySpeedConfig = opt(QuerySpeedConfig, "query-encoding speed measurement")


# Search-space samplers of `densekit tune` (densekit.tune maps each to its ray.tune function):
# name -> what its argument list holds.
SEARCH_SAMPLERS = {
    "uniform": "[low, high]",
    "quniform": "[low, high, q]",
    "loguniform": "[low, high] (low > 0)",
    "qloguniform": "[low, high, q] (low > 0)",
    "randint": "[low, high) integers",
    "choice": "[value, value, ...]",
    "grid": "[value, value, ...] (every value, num_trials times each)",
}


@dataclass
class TuneConfig:
    """Search a train config with Ray Tune: one `densekit train` run per trial, ASHA early stopping."""

    base: str = opt(MISSING, "the train config (YAML) every trial starts from")
    overrides: Dict[str, Any] = opt(  # noqa: UP006
        {}, "train keys set in every trial, e.g. {optim.max_steps: 2000}; on the command line overrides.model.path=..."
    )
    space: Dict[str, Any] = opt(  # noqa: UP006
        {},
        "dotted train key -> {sampler: args}, e.g. optim.lr: {loguniform: [1.0e-5, 1.0e-3]}; samplers: "
        + ", ".join(SEARCH_SAMPLERS),
    )
    metric: str = opt("ndcg@10", "dev metric of the periodic evaluation to maximise (each trial's eval.metric)")
    mode: Literal["max"] = opt("max", "max only: every retrieval metric densekit evaluates is higher-is-better")
    scheduler: Literal["asha", "none"] = opt("asha", "asha: stop poor trials early at evaluation rounds; none: run all")
    grace_period: int = opt(1, "ASHA: evaluation rounds a trial always runs before it may be stopped")
    reduction_factor: float = opt(2.0, "ASHA: only the best 1/reduction_factor of trials pass each rung")
    num_trials: int = opt(8, "trials sampled from the space (grid keys: each grid point num_trials times)")
    max_concurrent_trials: int = opt(0, "trials at once; 0: as many as the cluster's CPUs (GPUs) hold")
    max_failures: int = opt(0, "retries of a crashed trial (worker crashes are survived by train's max_failures)")
    seed: Optional[int] = opt(0, "seed of the sampling (null: a different search each run)")
    output: str = opt(MISSING, "output folder: best_config.yaml, best/, trials.jsonl, trials/<id>/, search/")
    overwrite: bool = opt(False, "start over even if the output holds a search of this config")
    report: bool = opt(False, "at the end, write report.md, report.json and quality_vs_speed.png (densekit report)")

    def search_space(self) -> dict[str, tuple[str, list]]:
        """The space as {dotted key: (sampler, args)}; nested mappings are flattened with dots."""
        out: dict[str, tuple[str, list]] = {}

        def walk(prefix: str, node: dict) -> None:
            if len(node) == 1 and next(iter(node)) in SEARCH_SAMPLERS:
                name, args = next(iter(node.items()))
                out[prefix] = (name, _check_sampler(prefix, name, args))
                return
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(v, dict) and v:
                    walk(key, v)
                elif isinstance(v, list) and prefix:  # {loguniformm: [...]}: a misspelt sampler
                    raise ConfigError(f"space.{prefix}: {_unknown_name('sampler', k, SEARCH_SAMPLERS)}")
                else:
                    raise ConfigError(
                        f"space.{key}: expected {{sampler: args}} with a sampler among "
                        f"{', '.join(SEARCH_SAMPLERS)}, got {v!r}"
                    )

        walk("", self.space)
        return out

    def override_list(self) -> list[str]:
        """`overrides` as dotted `key=value` strings for load_config (nested mappings flattened)."""
        out: list[str] = []

        def walk(prefix: str, node: dict) -> None:
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(v, dict) and v:
                    walk(key, v)
                else:
                    out.append(f"{key}={json.dumps(v)}")  # JSON is YAML: the value parses back as is

        walk("", self.overrides)
        return out

    def validate(self) -> None:
        if not self.space:
            raise ConfigError("tune: `space` is empty; e.g. space: {optim.lr: {loguniform: [1.0e-5, 1.0e-3]}}")
        self.search_space()
        if self.num_trials < 1 or self.grace_period < 1 or self.max_concurrent_trials < 0 or self.max_failures < 0:
            raise ConfigError("need num_trials >= 1, grace_period >= 1, max_concurrent_trials >= 0, max_failures >= 0")
        if self.reduction_factor <= 1:
            raise ConfigError(f"reduction_factor must be > 1, got {self.reduction_factor}")


def _check_sampler(key: str, name: str, args: Any) -> list:
    """The sampler's argument list, checked (bounds ordered, log bounds positive)."""
    where = f"space.{key}: {name} takes {SEARCH_SAMPLERS[name]}"
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}, got {args!r}")
    if name in ("choice", "grid"):
        return args
    want = 3 if name.startswith("q") else 2
    if len(args) != want or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}, got {args!r}")
    if not args[0] < args[1]:
        raise ConfigError(f"{where} with low < high, got {args!r}")
    if "log" in name and args[0] <= 0:
        raise ConfigError(f"{where}, got {args!r}")
    if name == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}, got {args!r}")
    return args


# --- methods: build, select, speed -----------------------------------------------------------------

BUILD_ARCHS = ("bert", "distilbert", "roberta")


@dataclass
class BuildConfig:
    """Build a small randomly initialised encoder offline: a config, its weights and a tokenizer."""

    output: str = opt(MISSING, "model directory (save_pretrained: config, weights, tokenizer)")
    arch: str = opt("bert", f"architecture: one of {', '.join(BUILD_ARCHS)}")
    layers: int = opt(2, "transformer layers")
    hidden: int = opt(32, "hidden size")
    heads: int = opt(2, "attention heads (must divide hidden)")
    intermediate: Optional[int] = opt(None, "feed-forward size (default 4 x hidden)")
    max_positions: int = opt(128, "longest sequence in tokens")
    vocab_size: int = opt(8000, "WordPiece vocabulary size (the trained vocabulary may be smaller)")
    texts: List[str] = opt(  # noqa: UP006
        [], "tables whose text (and title) columns train the tokenizer, e.g. [corpus, queries]"
    )
    max_texts: Optional[int] = opt(None, "read at most this many rows of each table for the tokenizer")
    tokenizer_from: Optional[str] = opt(
        None, "copy this model directory's tokenizer instead of training one (teacher and student share it)"
    )
    seed: int = opt(0, "seed of the random weights")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.arch not in BUILD_ARCHS:
            raise ConfigError(_unknown_name("arch", self.arch, BUILD_ARCHS))
        if bool(self.texts) == (self.tokenizer_from is not None):
            raise ConfigError("build: give either texts=[tables] (train a tokenizer) or tokenizer_from=<model dir>")
        sizes = ("layers", "hidden", "heads", "max_positions", "vocab_size")
        bad = [k for k in sizes if getattr(self, k) < 1]
        if bad or (self.intermediate is not None and self.intermediate < 1):
            raise ConfigError(f"build: {', '.join(bad or ['intermediate'])} must be >= 1")
        if self.hidden % self.heads:
            raise ConfigError(f"build: hidden={self.hidden} must divide by heads={self.heads}")


@dataclass
class TrainsetConfig:
    """Training and dev splits of a labelled collection, plus pseudo-queries from its corpus
    (document titles judging their own document; unjudged sentences for query-only training)."""

    corpus: str = opt(MISSING, "corpus table (pid, text, title)")
    queries: str = opt(MISSING, "queries table (qid, text) holding every query of `qrels`")
    qrels: str = opt(MISSING, "training qrels (the split to divide: e.g. a BEIR import's qrels/train)")
    output: str = opt(MISSING, "folder: queries/, train_queries/, labelled_queries/, qrels/train/, qrels/dev/")
    dev_queries: int = opt(0, "judged queries held out as dev (a seeded draw); 0 = no dev split")
    title_queries: bool = opt(False, "each document's title as a query judging its own document (relevance 1)")
    sentence_queries: int = opt(0, "up to n unjudged sentences of the documents as training queries (query-only methods)")
    min_words: int = opt(4, "sentence pseudo-queries have at least this many words")
    id_prefix: str = opt("", "prefix of the pseudo-queries' ids (t-<pid>, s-<pid>-<i>) when they would clash")
    seed: int = opt(0, "seed of the dev draw and the sentence sample")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.dev_queries < 0 or self.sentence_queries < 0 or self.min_words < 1:
            raise ConfigError("trainset: dev_queries and sentence_queries must be >= 0, min_words >= 1")


@dataclass
class SelectConfig:
    """PROD's data-progressive selection: keep the queries the teacher ranks right and the student
    ranks just below the top, as training groups with the hardest negatives first."""

    run: str = opt(MISSING, "the student's run over the training queries (densekit search)")
    groups: str = opt(
        MISSING,
        "the student's candidates with teacher scores: `mine` of the same run (strategy=top) then `score`",
    )
    qrels: str = opt(MISSING, "training qrels (positives: relevance >= positive_level)")
    output: str = opt(MISSING, "training groups of the kept queries (teacher scores kept)")
    student_min_rank: int = opt(2, "keep a query if the student ranks its first positive at this rank or lower")
    student_max_rank: int = opt(15, "... and at this rank or higher (PROD: 2..15)")
    teacher_max_rank: int = opt(1, "... and the teacher's reranking puts a positive within this rank (PROD: 1)")
    num_negatives: int = opt(15, "negatives kept per query: the group's first n, in retrieval order (hardest first)")
    positive_level: int = opt(1, "qrels with relevance >= this are positives")
    rows_per_part: int = opt(100_000, "groups per Parquet part")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if not 1 <= self.student_min_rank <= self.student_max_rank:
            raise ConfigError(
                f"select: need 1 <= student_min_rank <= student_max_rank, got {self.student_min_rank}..{self.student_max_rank}"
            )
        if self.teacher_max_rank < 1 or self.num_negatives < 1 or self.positive_level < 1:
            raise ConfigError("select: teacher_max_rank, num_negatives and positive_level must be >= 1")


@dataclass
class SpeedConfig:
    """Encoding throughput of several models on the same texts, measured in turn on one Ray worker."""

    models: List[str] = opt([], "model directories; the first is the reference (e.g. the teacher)")  # noqa: UP006
    input: str = opt(MISSING, "queries table (qid, text) or corpus table (pid, text, title)")
    output: str = opt(MISSING, "folder: speed.json (texts/s per model, speed-up against the first) + manifest")
    kind: Literal["auto", "queries", "passages"] = opt(
        "auto", "which tower encodes; auto: queries if the input has a qid column"
    )
    batch_size: int = opt(64, "texts per forward pass (the query-distillation paper measures at 64)")
    max_texts: int = opt(2048, "encode the first N texts of the input")
    repeats: int = opt(3, "timed passes per model, interleaved across models; the fastest counts")
    threads: Optional[int] = opt(None, "torch CPU threads (default: the worker's CPUs)")
    resources: ResourcesConfig = opt(ResourcesConfig, "the one worker: cpus_per_worker, use_gpu")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("speed: models is empty: give the reference model first, then the others")
        if self.batch_size < 1 or self.max_texts < 1 or self.repeats < 1:
            raise ConfigError("speed: batch_size, max_texts and repeats must be >= 1")
