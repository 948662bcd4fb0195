"""`densekit report RUN_DIR`: quality and query-encoding speed of the models of a method run, a train
output or a tune output, as report.md (tables), report.json (the numbers) and quality_vs_speed.png.

Speed is measured here, not by evaluate/search: every model is timed in one process, on the same
queries, batch size and threads, interleaved pass by pass, so the numbers compare with each other.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from densekit.artifacts import is_complete, read_table, write_json_atomic, write_text_atomic
from densekit.config import QuerySpeedConfig, ReportConfig, load_config
from densekit.errors import ConfigError, InputError
from densekit.logs import format_duration

logger = logging.getLogger(__name__)

REPORT_MD, REPORT_JSON, PLOT_PNG = "report.md", "report.json", "quality_vs_speed.png"
# Columns of the quality table: metrics.json key -> header.
COLUMNS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@100": "Recall@100"}


# --- query-encoding speed --------------------------------------------------------------------------


@dataclass
class Speed:
    """Query-encoding throughput of one model: the fastest of `repeats` timed passes."""

    queries_per_s: float
    best_seconds: float
    seconds: list[float]  # every timed pass, in order
    num_queries: int
    batch_size: int
    threads: int | None = None


def time_encoders(
    encoders: dict[str, Callable[[list[str]], Any]],
    texts: Sequence[str],
    batch_size: int,
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Speed]:
    """Time each encoder on the same texts: `warmup` untimed passes each, then `repeats` timed
    passes interleaved across encoders (a burst of load on a shared machine then hits every
    encoder alike), keeping each one's fastest pass.

    Args:
        encoders: name -> function encoding one batch of query texts (blocking until done).
        texts: the queries, split into consecutive batches of `batch_size`.
        clock: seconds (injectable for tests).

    Returns:
        name -> Speed with queries_per_s = len(texts) / fastest pass.
    """
    if not texts:
        raise ValueError("no query texts to time")
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    for encode in encoders.values():
        for _ in range(warmup):
            for b in batches:
                encode(b)
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeats):
        for name, encode in encoders.items():
            start = clock()
            for b in batches:
                encode(b)
            seconds[name].append(clock() - start)
    out = {}
    for name, times in seconds.items():
        best = min(times)
        out[name] = Speed(len(texts) / max(best, 1e-12), best, times, len(texts), batch_size)
    return out


def measure_query_speed(model_dirs: dict[str, str], texts: Sequence[str], sc: QuerySpeedConfig) -> dict[str, Speed]:
    """Load each model (bi-encoder or ColBERT) and time its query encoding, tokenisation included,
    as `time_encoders` does; torch's thread count is set to `sc.threads` meanwhile.

    Models without a query encoder (cross-encoders) are left out of the result.
    """
    import torch

    from densekit.models import load_model

    device = torch.device(sc.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("speed.device=cuda but CUDA is not available")
    encoders = {}
    for name, path in model_dirs.items():
        model = load_model(path, device=device)
        if not hasattr(model, "encode_queries"):
            logger.info("%s: a %s has no query encoder; no speed measured", name, model.kind)
            continue

        def encode(batch: list[str], model=model) -> None:
            enc = model.tokenize_queries(batch)
            model.encode_queries(**{k: v.to(device) for k, v in enc.items()})
            if device.type == "cuda":
                torch.cuda.synchronize()

        encoders[name] = encode
    threads = torch.get_num_threads()
    torch.set_num_threads(sc.threads)
    try:
        with torch.inference_mode():
            logger.info(
                "timing query encoding of %d model(s): %d queries, batch %d, %d thread(s), %d warm-up + best of %d passes",
                len(encoders), len(texts), sc.batch_size, sc.threads, sc.warmup, sc.repeats,
            )  # fmt: skip
            speeds = time_encoders(encoders, texts, sc.batch_size, sc.repeats, sc.warmup)
    finally:
        torch.set_num_threads(threads)
    for s in speeds.values():
        s.threads = sc.threads
    return speeds


# --- what a run holds ------------------------------------------------------------------------------


@dataclass
class Row:
    """One evaluated model."""

    label: str
    metrics: dict[str, float]
    source: str  # the evaluate stage (or train/tune file) the metrics come from
    model: str | None = None  # the query encoder's directory
    queries: str | None = None  # the queries table it was evaluated on
    index_model: str | None = None  # the model that encoded the indexed documents, if known
    about: str = ""
    layers: int | None = None
    hidden: int | None = None
    params: int | None = None
    speed: Speed | None = None
    # Paired tests against a baseline run (evaluate's `baseline`): {"baseline": label,
    # "num_queries": n, "metrics": {name: {run, baseline, diff, t_test_p, randomization_p, ...}}}.
    comparison: dict | None = None
    eval_set: str | None = None  # the qrels it was evaluated against (as named in the run folder)


@dataclass
class Report:
    kind: str  # "method", "train" or "tune"
    run_dir: str
    title: str
    rows: list[Row] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)  # name, step, seconds, status, about
    trainings: list[dict] = field(default_factory=list)  # name, steps, best_step, loss, dev metrics
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read back a report.json that report_run wrote."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = [Row(**{**r, "speed": Speed(**r["speed"]) if r.get("speed") else None}) for r in data["rows"]]
        names = {f.name for f in fields(cls)} - {"rows"}
        return cls(rows=rows, **{k: v for k, v in data.items() if k in names})


def _read_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    if not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"not valid JSON ({e.msg})") from None


class _Paths:
    """Finds paths recorded by the steps of a run, even if the run folder moved or the run was
    made from another working directory (stage outputs are recorded as `<output>/<stage>`)."""

    def __init__(self, run_dir: Path, recorded: str | None):
        self.run_dir = run_dir
        self.recorded = recorded.rstrip("/") if recorded else None

    def __call__(self, path: str | None) -> Path | None:
        if not path:
            return None
        p = Path(path)
        if p.exists():
            return p
        if self.recorded and (path == self.recorded or path.startswith(self.recorded + "/")):
            return self.run_dir / path[len(self.recorded) :].lstrip("/")
        return p

    def label(self, model: Path) -> str:
        """A model inside the run is named by its stage ("teacher", "teacher (best)")."""
        try:
            rel = model.resolve().relative_to(self.run_dir.resolve()).parts
        except ValueError:
            return model.name
        if not rel:
            return model.name
        extra = [p for p in rel[1:] if p != "model"]
        return rel[0] + (f" ({'/'.join(extra)})" if extra else "")


def _trace(run: Path | None, paths: _Paths) -> tuple[Path | None, Path | None, Path | None]:
    """(query model, queries table, index model) behind the run an evaluate output evaluated, read
    from the config.yaml each step writes beside its output: search -> (encode) -> index."""
    if run is None:
        return None, None, None
    search = _read_yaml(run / "config.yaml")
    model, queries = search.get("model"), search.get("queries")
    if not model and search.get("query_embeddings"):
        enc = _read_yaml(paths(search["query_embeddings"]) / "config.yaml")
        model, queries = enc.get("model"), enc.get("input")
    index_model = None
    if search.get("index"):
        emb = paths(_read_yaml(paths(search["index"]) / "config.yaml").get("embeddings"))
        if emb is not None:
            index_model = _read_yaml(emb / "config.yaml").get("model")
    return paths(model), paths(queries), paths(index_model)


def _model_facts(row: Row) -> None:
    """Layers, hidden size and parameter count of the row's model, from its files (no torch)."""
    if row.model is None:
        return
    d = Path(row.model)
    cfg_path = d / "config.json" if (d / "config.json").is_file() else d / "query" / "config.json"
    if cfg_path.is_file():
        cfg = _read_json(cfg_path)
        row.layers = cfg.get("num_hidden_layers") or cfg.get("n_layers")
        row.hidden = cfg.get("hidden_size") or cfg.get("dim")
    total = 0
    for f in d.rglob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(f), "np") as st:
            for key in st.keys():
                total += math.prod(st.get_slice(key).get_shape())
    row.params = total or None


def _training(name: str, out: Path) -> dict | None:
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        return None
    s = _read_json(summary_path)
    t = {"name": name, "steps": s.get("step"), "best_step": s.get("best_step"), "metric": s.get("metric")}
    final = s.get("final") or {}
    t["loss"] = final.get("loss")
    # Each term under its own name: a run's total of contrastive + KL is no loss to compare with
    # another run's contrastive alone.
    t["losses"] = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("loss/") and v is not None}
    t["queries_per_s"] = final.get("queries_per_s")
    dev = s.get("best") or final
    t["dev"] = {k: dev[k] for k in COLUMNS if k in dev}
    return t


def collect(run_dir: str | Path) -> Report:
    """Read what a method run, train output or tune output holds (no models loaded)."""
    d = Path(run_dir)
    if any(d.glob("method-*.json")):
        return _collect_method(d)
    if (d / "trials.jsonl").is_file():
        return _collect_tune(d)
    if (d / "summary.json").is_file() and (d / "model").is_dir():
        return _collect_train(d)
    raise ConfigError(
        f"{d}: not a method run (method-<name>.json), a train output (summary.json + model/) "
        "or a tune output (trials.jsonl)"
    )


def _method_status(d: Path) -> dict:
    """The stages of every method run in folder `d` (method-<name>.json each), oldest first: methods
    that share a run folder share their common stages, so one report compares all their models."""
    files = sorted(d.glob("method-*.json"), key=lambda p: p.stat().st_mtime)
    merged: dict = {"method": [], "stages": {}, "order": [], "output": None}
    for f in files:
        status = _read_json(f)
        merged["method"].append(status.get("method", f.stem[len("method-"):]))
        merged["output"] = merged["output"] or status.get("output")
        for name in status.get("order") or list(status.get("stages", {})):
            st = status["stages"][name]
            if name not in merged["stages"]:
                merged["order"].append(name)
                merged["stages"][name] = st
            elif merged["stages"][name].get("pending") and not st.get("pending"):
                merged["stages"][name] = st
    merged["method"] = ", ".join(merged["method"])
    return merged


def _collect_method(d: Path) -> Report:
    status = _method_status(d)
    stages: dict = status.get("stages", {})
    recorded = status.get("output")
    if recorded is None and stages:
        recorded = str(Path(next(iter(stages.values()))["output"]).parent)
    paths = _Paths(d, recorded)
    rep = Report("method", str(d), status.get("method", d.name))
    runs: dict[str, Path | None] = {}  # evaluate stage -> the run it evaluated
    order = status.get("order") or list(stages)
    for name in order:
        st = stages[name]
        out = paths(st.get("output")) or d / name
        state = "not run" if st.get("pending") else ("skipped (complete)" if st.get("skipped") else "done")
        rep.stages.append({"name": name, "step": st.get("step"), "seconds": st.get("seconds"),
                           "status": state, "about": st.get("about", "")})
        if st.get("step") == "train":
            t = _training(name, out)
            if t is not None:
                rep.trainings.append(t)
        if st.get("step") != "evaluate":
            continue
        if not is_complete(out) or not (out / "metrics.json").is_file():
            rep.notes.append(f"evaluate stage '{name}' has no complete output yet")
            continue
        metrics = _read_json(out / "metrics.json").get("metrics", {})
        runs[name] = paths(_read_yaml(out / "config.yaml").get("run"))
        model, queries, index_model = _trace(runs[name], paths)
        label = paths.label(model) if model is not None else name
        about = ""
        if model is not None:
            producer = stages.get(label.split(" ")[0], {})
            about = producer.get("about", "")
        row = Row(label, metrics, name, str(model) if model else None, str(queries) if queries else None,
                  str(index_model) if index_model else None, about)
        qrels = paths(_read_yaml(out / "config.yaml").get("qrels"))
        if qrels is not None:
            row.eval_set = qrels.relative_to(d).as_posix() if qrels.is_relative_to(d) else str(qrels)
        if index_model is not None and model is not None and Path(index_model).resolve() != Path(model).resolve():
            row.about = (row.about + "; " if row.about else "") + f"documents indexed by {paths.label(index_model)}"
        if (out / "comparison.json").is_file():
            row.comparison = _read_json(out / "comparison.json")
        rep.rows.append(row)
    # Two evaluations of one model (e.g. two query sets): name them by their stages too.
    counts: dict[str, int] = {}
    for r in rep.rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    for r in rep.rows:
        if counts[r.label] > 1:
            r.label = f"{r.label} [{r.source}]"
    # A comparison names its baseline by the row evaluated on that run, else by the run's folder.
    by_run = {str(Path(runs[r.source]).resolve()): r.label for r in rep.rows if runs.get(r.source)}
    for r in rep.rows:
        if r.comparison:
            base = paths(r.comparison.get("baseline"))
            r.comparison["baseline"] = by_run.get(str(base.resolve()), base.name) if base else "baseline"
    return rep


def comparison_lines(rep: Report) -> list[str]:
    """One line per row compared with a baseline run: each measure's difference and p-values."""
    lines = []
    for r in rep.rows:
        c = r.comparison
        if not c or not c.get("metrics"):
            continue
        parts = [
            f"{name} {m['diff']:+.4f} (t-test p={m['t_test_p']:.2g}, randomisation p={m['randomization_p']:.2g})"
            for name, m in c["metrics"].items()
            if m.get("diff") is not None and m.get("t_test_p") is not None and m.get("randomization_p") is not None
        ]
        if parts:
            lines.append(f"{r.label} vs {c['baseline']} ({c.get('num_queries', '?')} queries, paired): " + "; ".join(parts))
    return lines


def _collect_train(d: Path) -> Report:
    cfg = _read_yaml(d / "config.yaml")
    rep = Report("train", str(d), d.name)
    t = _training(d.name, d)
    if t is not None:
        rep.trainings.append(t)
    s = _read_json(d / "summary.json")
    queries = (cfg.get("eval") or {}).get("queries") or (cfg.get("data") or {}).get("train")
    final = s.get("final") or {}
    if any(k in final for k in COLUMNS):
        rep.rows.append(Row(f"model (step {s.get('step')})", {k: final[k] for k in COLUMNS if k in final},
                            "summary.json final", str(d / "model"), queries))
    best = s.get("best")
    if best and (d / "best").is_dir() and s.get("best_step") != s.get("step"):
        rep.rows.append(Row(f"best (step {s.get('best_step')})", {k: best[k] for k in COLUMNS if k in best},
                            "summary.json best", str(d / "best"), queries))
    if not rep.rows:
        rep.notes.append("no dev evaluation in this training (eval.every=0): quality not known")
        rep.rows.append(Row(f"model (step {s.get('step')})", {}, "summary.json", str(d / "model"), queries))
    return rep


def _collect_tune(d: Path) -> Report:
    rep = Report("tune", str(d), d.name)
    metric = None
    base = _read_yaml(d / "base_config.yaml")
    queries = (base.get("eval") or {}).get("queries")
    for line_no, line in enumerate((d / "trials.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            t = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(d / "trials.jsonl", line_no, f"not valid JSON ({e.msg})") from None
        metric = t.get("metric", metric)
        out = Path(t.get("output", d / "trials" / t["trial_id"]))
        summary = _read_json(out / "summary.json") if (out / "summary.json").is_file() else {}
        metrics = dict(summary.get("best") or {})
        if t.get("best") is not None:
            metrics.setdefault(t["metric"], t["best"])
        metrics = {k: v for k, v in metrics.items() if k in COLUMNS or k == metric}
        model = next((out / s for s in ("best", "model") if (out / s).is_dir()), None)
        params = ", ".join(f"{k}={v}" for k, v in (t.get("params") or {}).items())
        rep.rows.append(Row(t["trial_id"], metrics, "trials.jsonl", str(model) if model else None, queries,
                            about=f"{t.get('status')}, {params}"))
        rep.trainings.append({"name": t["trial_id"], "steps": t.get("steps"), "best_step": t.get("best_step"),
                              "metric": t.get("metric"), "loss": None, "queries_per_s": None,
                              "dev": {k: v for k, v in metrics.items() if k in COLUMNS}})
    return rep


# --- measuring and writing -------------------------------------------------------------------------


def _timing_queries(rep: Report, sc: QuerySpeedConfig) -> list[str]:
    table = sc.queries or next((r.queries for r in rep.rows if r.queries and Path(r.queries).is_dir()), None)
    if table is None:
        raise ConfigError(f"{rep.run_dir}: no queries table found to time the models; set speed.queries=<table>")
    t = read_table(table, ["text"] if "query" not in _columns(table) else ["query"])
    texts = [x for x in t.column(0).to_pylist() if x][: sc.num_queries]
    if not texts:
        raise InputError(table, None, "no query texts to time")
    return texts


def _columns(table: str) -> list[str]:
    import pyarrow.parquet as pq

    from densekit.artifacts import table_parts

    parts = table_parts(table)
    return pq.read_schema(parts[0]).names if parts else []


def build_report(cfg: ReportConfig) -> Report:
    """Collect the run's numbers and time its models' query encoding."""
    rep = collect(cfg.run)
    if cfg.title:
        rep.title = cfg.title
    for row in rep.rows:
        _model_facts(row)
    timed = {r.label: r.model for r in rep.rows if r.model and Path(r.model).is_dir()}
    if cfg.speed.enabled and timed:
        texts = _timing_queries(rep, cfg.speed)
        speeds = measure_query_speed(timed, texts, cfg.speed)
        for row in rep.rows:
            row.speed = speeds.get(row.label)
    return rep


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _fmt_params(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _threads(n: int | None) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def speed_range(speed: Speed) -> tuple[float, float]:
    """(slowest, fastest) queries/s over the timed passes: the spread a single figure hides."""
    times = [t for t in speed.seconds if t > 0] or [speed.best_seconds]
    return speed.num_queries / max(times), speed.num_queries / min(times)


def _fmt_speed(speed: Speed | None) -> str:
    if speed is None:
        return "–"
    lo, hi = speed_range(speed)
    if len(speed.seconds) < 2:
        return f"{speed.queries_per_s:,.0f}"
    return f"{speed.queries_per_s:,.0f} ({lo:,.0f}–{hi:,.0f})"


def _fmt_losses(t: dict) -> str:
    terms = t.get("losses") or {}
    if not terms:
        return _fmt(t.get("loss"))
    return ", ".join(f"{name} {_fmt(v)}" for name, v in sorted(terms.items()))


def eval_sets(rep: Report) -> dict[str | None, list[Row]]:
    """The rows grouped by the qrels they were evaluated against, in order of appearance."""
    groups: dict[str | None, list[Row]] = {}
    for r in rep.rows:
        groups.setdefault(r.eval_set, []).append(r)
    return groups


def quality_table(rep: Report, rows: list[Row] | None = None) -> str:
    """The Markdown table of the models (`rows`, default all): quality, size and query-encoding
    speed; the speed-up is against the table's first timed row."""
    rows = rep.rows if rows is None else rows
    base = next((r.speed.queries_per_s for r in rows if r.speed), None)
    head = ["model", "layers x hidden", "params", *COLUMNS.values(), "queries/s", "speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"]
    for r in rows:
        size = f"{r.layers} x {r.hidden}" if r.layers and r.hidden else "–"
        qps = r.speed.queries_per_s if r.speed else None
        cells = [r.label, size, _fmt_params(r.params), *(_fmt(r.metrics.get(k)) for k in COLUMNS),
                 _fmt_speed(r.speed), f"{qps / base:.1f}x" if qps and base else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(rep: Report, sc: QuerySpeedConfig, plot: str | None) -> str:
    out = [f"# {rep.title}", "", f"Report of the {rep.kind} in `{rep.run_dir}`.", ""]
    if rep.rows:
        groups = eval_sets(rep)
        if len(groups) > 1:  # one table per evaluation set (e.g. in-domain and zero-shot collections)
            out += ["## Models", ""]
            for name, rows in groups.items():
                out += [f"### Evaluated on `{name or 'unknown qrels'}`", "", quality_table(rep, rows), ""]
        else:
            out += ["## Models", "", quality_table(rep), ""]
        speeds = [r.speed for r in rep.rows if r.speed]
        if speeds:
            s = speeds[0]
            out.append(
                f"Query encoding: {s.num_queries} queries in batches of {s.batch_size}, "
                f"{_threads(s.threads)} on {sc.device}, tokenisation included; "
                f"{sc.warmup} warm-up pass then the fastest of {sc.repeats} passes interleaved across "
                "models, with the slowest and fastest pass in brackets. Speed-up is relative to the first row."
            )
        abouts = [f"- **{r.label}**: {r.about}" for r in rep.rows if r.about]
        if abouts:
            out += ["", *abouts]
        compared = comparison_lines(rep)
        if compared:
            out += ["", "Differences, paired over the same queries:", "", *(f"- {c}" for c in compared)]
        if plot:
            out += ["", f"![quality against query speed]({plot})"]
        out.append("")
    if rep.trainings:
        out += ["## Training", "", "| run | steps | best step | final losses (each term) | train queries/s | dev " +
                " | dev ".join(COLUMNS.values()) + " |", "|---|--:|--:|--:|--:|" + "--:|" * len(COLUMNS)]
        for t in rep.trainings:
            out.append("| " + " | ".join([t["name"], _fmt(t["steps"]), _fmt(t["best_step"]), _fmt_losses(t),
                                          _fmt(t["queries_per_s"], 0),
                                          *(_fmt(t["dev"].get(k)) for k in COLUMNS)]) + " |")
        out.append("")
    if rep.stages:
        total = sum(s["seconds"] or 0 for s in rep.stages)
        out += ["## Stages", "", "| # | stage | step | time | status |", "|--:|---|---|--:|---|"]
        for i, s in enumerate(rep.stages, 1):
            took = "–" if s["seconds"] is None else format_duration(s["seconds"])
            out.append(f"| {i} | {s['name']} | {s['step']} | {took} | {s['status']} |")
        out += ["", f"Total stage time: {format_duration(total)}.", ""]
    if rep.notes:
        out += ["## Notes", "", *(f"- {n}" for n in rep.notes), ""]
    return "\n".join(out)


def plot_quality_vs_speed(rep: Report, metric: str, path: Path) -> bool:
    """Scatter of `metric` against queries/s, one labelled point per model; False if nothing to
    plot (no model has both numbers)."""
    points = [(r.label, r.speed.queries_per_s, r.metrics[metric]) for r in rep.rows
              if r.speed and r.metrics.get(metric) is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in Ray workers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    ranges = [speed_range(r.speed) for r in rep.rows if r.speed and r.metrics.get(metric) is not None]
    # Horizontal bars from the slowest to the fastest timed pass (the point is the fastest).
    xerr = [[x - lo for x, (lo, _) in zip(xs, ranges)], [hi - x for x, (_, hi) in zip(xs, ranges)]]
    ax.errorbar(xs, ys, xerr=xerr, fmt="none", ecolor="tab:gray", capsize=3, zorder=2)
    ax.scatter(xs, ys, s=60, color="tab:blue", zorder=3)
    for label, x, y in points:
        ax.annotate(label, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9)
    if max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log")
    # Room for the labels: pad the y range, and the x range on the right.
    lo, hi = min(ys), max(ys)
    pad = max(0.05 * (hi - lo), 0.02)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + 3 * pad) if hi <= 1 else hi + 3 * pad)
    left, right = ax.get_xlim()
    if ax.get_xscale() == "log":
        ax.set_xlim(left / 1.2, right * 1.6)
    else:
        ax.set_xlim(max(0.0, left - 0.05 * (right - left)), right + 0.15 * (right - left))
    s = next(r.speed for r in rep.rows if r.speed)
    ax.set_xlabel(f"query encoding, queries/s (batch {s.batch_size}, {_threads(s.threads)})")
    ax.set_ylabel(COLUMNS.get(metric, metric))
    ax.set_title(f"{rep.title}: quality against query speed", fontsize=10)
    ax.grid(True, alpha=0.3, zorder=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from densekit.artifacts import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return True


def write_report(cfg: ReportConfig) -> Report:
    """Build the report and write report.md, report.json and quality_vs_speed.png (each atomically)."""
    rep = build_report(cfg)
    out = Path(cfg.output or cfg.run)
    out.mkdir(parents=True, exist_ok=True)
    plotted = plot_quality_vs_speed(rep, cfg.metric, out / PLOT_PNG)
    write_text_atomic(out / REPORT_MD, render_markdown(rep, cfg.speed, PLOT_PNG if plotted else None))
    write_json_atomic(out / REPORT_JSON, {**asdict(rep), "speed_config": asdict(cfg.speed)})
    logger.info("report: %s%s", out / REPORT_MD, f" and {out / PLOT_PNG}" if plotted else "")
    return rep


def report_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> Report:
    """The report at the end of `train` / `tune` / `run`: defaults plus `report.*`-style overrides."""
    cfg = load_config(ReportConfig, None, [f"run={run_dir}", *overrides])
    return write_report(cfg)


def report(argv: list[str]) -> int:
    """densekit report RUN_DIR [key=value ...]

    Writes RUN_DIR/report.md (models: nDCG@10, MRR@10, Recall@100, query-encoding queries/s;
    training runs; stages with their times), report.json and quality_vs_speed.png. RUN_DIR is a
    `densekit run` folder, a train output or a tune output. Keys: output=DIR, title=..., metric=
    ndcg@10 (plot), speed.enabled, speed.queries=TABLE, speed.num_queries=512,
    speed.batch_size=64, speed.threads=1, speed.warmup=1, speed.repeats=5, speed.device=cpu.
    """
    positional = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if len(positional) != 1:
        raise ConfigError(f"usage: {report.__doc__.splitlines()[0]}")
    run_dir = Path(positional[0])
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    write_report(load_config(ReportConfig, None, [f"run={run_dir}", *overrides]))
    return 0
