"""Retrieval measures by name, with no heavy imports (config validation parses metric names):
`parse_metric` ("nDCG@10" -> how pytrec_eval computes it), per-query and mean values of a run
against qrels, and paired significance tests. `densekit evaluate` (pipelines/evaluate.py) and the
training loop's dev evaluation both compute through here.

Convention for queries (the one BEIR and MTEB report): the mean is over every query that has qrels;
a judged query the run retrieved nothing for scores 0 on every measure, as `trec_eval -c` does.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from densekit.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

Run = dict[str, dict[str, float]]  # qid -> pid -> score (higher is better)
Qrels = dict[str, dict[str, int]]  # qid -> pid -> relevance

# The measures the training loop's dev evaluation reports (its `eval.metric` is added).
EVAL_METRICS = ("mrr@10", "ndcg@10", "recall@100")


@dataclass(frozen=True)
class Metric:
    """One measure as densekit names it, and how pytrec_eval computes it.

    Attributes:
        name: canonical name, the key in metrics.json ("mrr@10", "ndcg@10", "map").
        measure: the pytrec_eval measure to request ("recip_rank", "ndcg_cut.10").
        key: the key pytrec_eval returns it under ("recip_rank", "ndcg_cut_10").
        cutoff: for MRR only: the run is truncated at this rank first (trec_eval's recip_rank
            has no cut-off parameter).
    """

    name: str
    measure: str
    key: str
    cutoff: int | None = None


# base name -> (canonical base, cut-off: "required" | "optional" | "none")
_BASES = {
    "mrr": ("mrr", "optional"),
    "rr": ("mrr", "optional"),
    "recip_rank": ("mrr", "optional"),
    "ndcg": ("ndcg", "optional"),
    "recall": ("recall", "required"),
    "r": ("recall", "required"),
    "map": ("map", "optional"),
    "ap": ("map", "optional"),
    "p": ("p", "required"),
    "precision": ("p", "required"),
    "r_prec": ("r_prec", "none"),
    "rprec": ("r_prec", "none"),
}


def parse_metric(text: str) -> Metric:
    """Parse a measure name such as "mrr@10", "nDCG@10", "recall@1000", "map", "P@5".

    Raises:
        ConfigError: unknown measure (with a did-you-mean) or a missing / unexpected cut-off.
    """
    raw = text.strip().lower()
    base, _, cut = raw.partition("@")
    if base not in _BASES:
        close = difflib.get_close_matches(base, list(_BASES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown metric '{text}'; expected one of mrr[@k], ndcg[@k], recall@k, map[@k], p@k, "
            f"r_prec.{hint}"
        )
    base, cut_rule = _BASES[base]
    k: int | None = None
    if cut:
        if not cut.isdigit() or int(cut) < 1:
            raise ConfigError(f"metric '{text}': the cut-off after @ must be a positive integer")
        k = int(cut)
    if cut_rule == "required" and k is None:
        raise ConfigError(f"metric '{text}' needs a cut-off, e.g. {base}@100")
    if cut_rule == "none" and k is not None:
        raise ConfigError(f"metric '{text}' takes no cut-off")
    name = f"{base}@{k}" if k is not None else base
    if base == "mrr":
        return Metric(name, "recip_rank", "recip_rank", k)
    if base == "ndcg":
        return Metric(name, f"ndcg_cut.{k}", f"ndcg_cut_{k}") if k else Metric(name, "ndcg", "ndcg")
    if base == "recall":
        return Metric(name, f"recall.{k}", f"recall_{k}")
    if base == "map":
        return Metric(name, f"map_cut.{k}", f"map_cut_{k}") if k else Metric(name, "map", "map")
    if base == "p":
        return Metric(name, f"P.{k}", f"P_{k}")
    return Metric(name, "Rprec", "Rprec")


def truncate_run(run: Run, depth: int) -> Run:
    """Keep each query's top `depth` documents in trec_eval's order.

    trec_eval ignores the rank column: it sorts by score, descending, and breaks ties by docid,
    descending. Truncating any other way would change MRR@k whenever scores tie.
    """
    out: Run = {}
    for qid, docs in run.items():
        if len(docs) <= depth:
            out[qid] = docs
            continue
        order = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        out[qid] = dict(order[:depth])
    return out


def evaluate_run(
    run: Run,
    qrels: Qrels,
    metrics: Iterable[str | Metric],
    relevance_level: int = 1,
) -> dict[str, dict[str, float]]:
    """Per-query values of `metrics` for every judged query (zero when the run has none for it).

    Args:
        run: qid -> pid -> score, higher is better.
        qrels: qid -> pid -> graded relevance (0 = judged not relevant).
        metrics: measure names (see parse_metric) or parsed Metrics.
        relevance_level: binary measures count relevance >= this as relevant (nDCG uses the
            graded relevance as gain).

    Returns:
        qid -> metric name -> value, for every qid of `qrels`.
    """
    import pytrec_eval

    parsed = [m if isinstance(m, Metric) else parse_metric(m) for m in metrics]
    judged_run = {q: docs for q, docs in run.items() if q in qrels and docs}
    # One pytrec_eval call for the measures on the full run, one per distinct MRR cut-off.
    groups: dict[int | None, list[Metric]] = {}
    for m in parsed:
        groups.setdefault(m.cutoff, []).append(m)
    values: dict[str, dict[str, float]] = {q: {m.name: 0.0 for m in parsed} for q in qrels}
    for cutoff, ms in groups.items():
        sub = judged_run if cutoff is None else truncate_run(judged_run, cutoff)
        evaluator = pytrec_eval.RelevanceEvaluator(
            qrels, {m.measure for m in ms}, relevance_level=relevance_level
        )
        for qid, res in evaluator.evaluate(sub).items():
            for m in ms:
                values[qid][m.name] = float(res[m.key])
    return values


def mean_metrics(per_query: Mapping[str, Mapping[str, float]], names: list[str]) -> dict[str, float]:
    n = len(per_query)
    return {m: (sum(v[m] for v in per_query.values()) / n if n else 0.0) for m in names}


def paired_tests(
    a: np.ndarray, b: np.ndarray, permutations: int = 10_000, seed: int = 0
) -> dict[str, float | None]:
    """Two-sided paired t-test and randomisation (sign-flip permutation) test of mean(a - b).

    Args:
        a, b: `[Q]` per-query values of the same measure for two runs, aligned by query.
        permutations: random sign flips; the p-value is (1 + #{|mean flipped| >= |observed|}) /
            (1 + permutations), so it is never 0.

    Returns:
        diff, t_statistic, t_test_p, randomization_p (None where undefined, e.g. a == b).
    """
    import numpy as np
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # [Q]
    out: dict[str, float | None] = {"diff": float(d.mean()) if d.size else 0.0}
    if d.size < 2 or np.allclose(d, d[0]):
        # Constant differences: the t statistic is undefined (zero variance).
        out.update(t_statistic=None, t_test_p=None)
    else:
        t = stats.ttest_rel(a, b)
        out.update(t_statistic=float(t.statistic), t_test_p=float(t.pvalue))
    if d.size == 0:
        out["randomization_p"] = None
        return out
    rng = np.random.default_rng(seed)
    observed = abs(d.mean())
    hits, done, chunk = 0, 0, max(1, min(permutations, 4_000_000 // max(d.size, 1)))
    while done < permutations:
        n = min(chunk, permutations - done)
        signs = rng.integers(0, 2, size=(n, d.size), dtype=np.int8) * 2 - 1  # [n, Q]
        flipped = np.abs((signs * d).mean(axis=1))  # [n]
        # A small tolerance: float sums of the same values in another order differ in the last bits.
        hits += int((flipped >= observed - 1e-12).sum())
        done += n
    out["randomization_p"] = (1 + hits) / (1 + permutations)
    return out


