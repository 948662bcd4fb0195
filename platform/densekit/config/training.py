"""Configs of train and tune."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional  # noqa: UP035

from omegaconf import MISSING

from densekit.config.common import LossConfig, ModelConfig, ResourcesConfig
from densekit.config.loader import opt, unknown_name
from densekit.errors import ConfigError

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
        if self.warmup_steps < 0:
            bad.append(f"optim.warmup_steps={self.warmup_steps} (0 or more)")
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
    teacher_cache: Optional[str] = opt(
        None,
        "folder to keep a frozen bi-encoder teacher's embeddings in, by input: runs that see the same "
        "batches (a search's trials, a retrain) read them instead of running the teacher; a search with share_teacher "
        "sets <output>/_teacher_cache",
    )
    compile_teacher: Optional[bool] = opt(
        None,
        "torch.compile a frozen online teacher's transformers with frozen weights (its forward ~1.9x "
        "on CPU); unset = on for a CPU run whose teacher sees >= 20,000 texts a worker "
        "(max_steps x batch x (1 + group_size))",
    )
    data: TrainDataConfig = opt(TrainDataConfig, "training data")
    candidates: Literal["auto", "global", "group", "retrieved"] = opt(
        "auto", "what each query is scored against (auto: what the losses need)"
    )
    train_query_encoder_only: bool = opt(
        False, "freeze the passage tower (ADORE, query-encoder distillation)"
    )
    losses: Dict[str, LossConfig] = opt({}, "loss name -> {weight, params}; the total is the weighted sum (a term at weight 0 is off)")  # noqa: UP006
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
        if self.teacher_cache and self.teacher is None:
            raise ConfigError("teacher_cache is set but there is no online teacher (teacher:) to cache")
        if self.optim.batch_size % self.resources.num_workers:
            raise ConfigError(
                f"optim.batch_size={self.optim.batch_size} must divide by "
                f"resources.num_workers={self.resources.num_workers}"
            )
        if self.eval.every and not (self.eval.queries and self.eval.qrels and (self.eval.corpus or self.eval.index)):
            raise ConfigError("eval.every is set: give eval.queries, eval.qrels and eval.corpus (or eval.index)")


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
    share_teacher: bool = opt(
        False,
        "trials share a frozen bi-encoder teacher's embeddings (train's teacher_cache, in <output>/_teacher_cache): "
        "its forward runs once a batch for the whole search; disk: 4 bytes x dim x texts x (1 + layers "
        "when a loss needs per-layer views) a step",
    )
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
                    raise ConfigError(f"space.{prefix}: {unknown_name('sampler', k, SEARCH_SAMPLERS)}")
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
