"""Configs of the retrieval steps: encode, index, search, evaluate, mine, score, rerank."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, Optional  # noqa: UP035

from omegaconf import MISSING

from densekit.config.common import ResourcesConfig
from densekit.config.loader import opt, unknown_name
from densekit.errors import ConfigError

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
    compile: Optional[bool] = opt(
        None,
        "torch.compile each actor's encoder with frozen weights (1.1-2x on CPU, by host; 10-25 s to compile); "
        "unset = on for CPU actors with >= 1e13 FLOPs to run each (texts x their estimated tokens x "
        "the model's size from its config.json)",
    )
    resources: ResourcesConfig = opt(ResourcesConfig, "actor pool: num_workers actors (GPU each if use_gpu)")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(unknown_name("precision", self.precision, PRECISIONS))
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(unknown_name("storage_dtype", self.storage_dtype, STORAGE_DTYPES))
        for name in ("batch_size", "block_rows", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1 (or unset: the model's own), got {self.max_length}")


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
    train_cpus: Optional[float] = opt(
        None,
        "CPUs (and FAISS threads) of the one training task, which runs alone before the shard "
        "builders; default: all the CPUs of the largest node (at least cpus_per_worker)",
    )
    add_batch_rows: int = opt(65_536, "vectors read and added per step by a shard builder")
    use_gpu_faiss: bool = opt(False, "train (and add) on GPU with faiss-gpu when it is importable")
    resources: ResourcesConfig = opt(ResourcesConfig, "cpus_per_worker: threads per shard-builder task")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        head = self.factory.split(",")[0].strip()
        if not any(head.startswith(t) for t in INDEX_TYPES):
            letters = "".join(itertools.takewhile(str.isalpha, head)) or head
            raise ConfigError(
                f"factory '{self.factory}': " + unknown_name("index type", letters, INDEX_TYPES)
            )
        if self.train_size < 1 or self.add_batch_rows < 1:
            raise ConfigError("train_size and add_batch_rows must be >= 1")
        if self.train_cpus is not None and self.train_cpus < 1:
            raise ConfigError(f"train_cpus must be >= 1 (or null for the largest node's CPUs), got {self.train_cpus}")


@dataclass
class SearchConfig:
    """Search a sharded index with query embeddings (or queries + a model); write a run."""

    index: str = opt(MISSING, "index directory written by `densekit index`")
    output: str = opt(MISSING, "run table directory (qid, pid, rank, score) + _run.trec")
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
    positive_min_rank: int = opt(
        1, "keep only the queries whose best positive the run ranks at this rank or lower (PROD: 2)"
    )
    positive_max_rank: Optional[int] = opt(
        None, "... and at this rank or higher (PROD: 15, the queries its select step can keep, before a "
        "cross-encoder scores them); with either set, a query whose positive the run missed is dropped",
    )
    rows_per_part: int = opt(100_000, "groups per Parquet part")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def positive_window(self) -> bool:
        """True when queries are kept by their best positive's rank."""
        return self.positive_min_rank > 1 or self.positive_max_rank is not None

    def validate(self) -> None:
        if self.positive_min_rank < 1 or (self.positive_max_rank is not None
                                          and self.positive_max_rank < self.positive_min_rank):
            raise ConfigError(f"need 1 <= positive_min_rank <= positive_max_rank, got "
                              f"{self.positive_min_rank}..{self.positive_max_rank}")
        if not 1 <= self.min_rank <= self.max_rank:
            raise ConfigError(f"need 1 <= min_rank <= max_rank, got {self.min_rank}..{self.max_rank}")
        if self.num_negatives < 1 or self.min_negatives < 0:
            raise ConfigError("num_negatives must be >= 1 and min_negatives >= 0")
        window = self.max_rank - self.min_rank + 1
        if self.num_negatives > window:
            raise ConfigError(
                f"num_negatives={self.num_negatives} but ranks {self.min_rank}..{self.max_rank} hold at most "
                f"{window} candidates; expected num_negatives <= {window} (raise max_rank or lower num_negatives)"
            )
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
            raise ConfigError(unknown_name("teacher kind", self.kind, TEACHER_KINDS))


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
    compile: Optional[bool] = opt(
        None,
        "torch.compile each teacher actor's model with frozen weights; unset = on for CPU actors "
        "with >= 20,000 pairs each",
    )
    resources: ResourcesConfig = opt(ResourcesConfig, "num_workers: actors per teacher (GPU each if use_gpu)")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if not self.teachers:
            raise ConfigError("teachers is empty: give at least one {model: DIR}")
        if self.precision not in PRECISIONS:
            raise ConfigError(unknown_name("precision", self.precision, PRECISIONS))


@dataclass
class RerankConfig:
    """Rerank each query's top candidates of a run with a teacher (cross-encoder, ColBERT, bi-encoder)."""

    run: str = opt(MISSING, "run table (qid, pid, rank, score) whose top candidates are reranked")
    queries: str = opt(MISSING, "queries table (qid, text) of the run's queries")
    corpus: str = opt(MISSING, "corpus table (pid, text, title) of the run's passages")
    output: str = opt(MISSING, "run table of the reranked candidates (score = the reranker's) + _run.trec")
    reranker: str = opt(MISSING, "reranker model directory (densekit checkpoint or HF / sentence-transformers)")
    kind: str = opt("auto", f"one of {', '.join(TEACHER_KINDS)}; auto: as saved in the checkpoint")
    max_length: Optional[int] = opt(None, "override the reranker's max token length")
    depth: int = opt(100, "candidates reranked per query: the run's top `depth` (the rest are dropped)")
    qrels: Optional[str] = opt(
        None, "rerank only the queries this qrels table judges (e.g. a test split of a run over every query)"
    )
    batch_size: int = opt(64, "query-passage pairs per forward pass")
    precision: str = opt("auto", f"autocast on CUDA: one of {', '.join(PRECISIONS)} (auto = fp16)")
    tag: str = opt("densekit-rerank", "run tag written in the TREC file")
    compile: Optional[bool] = opt(
        None,
        "torch.compile each reranker actor's model with frozen weights; unset = on for CPU actors "
        "with >= 20,000 pairs each",
    )
    resources: ResourcesConfig = opt(ResourcesConfig, "num_workers: reranker actors (GPU each if use_gpu)")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.depth < 1 or self.batch_size < 1:
            raise ConfigError(f"rerank: depth and batch_size must be >= 1, got {self.depth} and {self.batch_size}")
        if self.kind not in TEACHER_KINDS:
            raise ConfigError(unknown_name("reranker kind", self.kind, TEACHER_KINDS))
        if self.precision not in PRECISIONS:
            raise ConfigError(unknown_name("precision", self.precision, PRECISIONS))
