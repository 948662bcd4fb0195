"""What a run holds: the evaluated models, stages and trainings of a method run, a train output or a
tune output, read from the files the steps wrote (no models loaded)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from densekit.artifacts import config_file, is_complete
from densekit.errors import ConfigError, InputError
from densekit.report.timing import Speed

# Columns of the quality table: metrics.json key -> header.
COLUMNS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@100": "Recall@100"}



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
    search: dict | None = None  # a tune output's trials, chosen and default config (report.search)

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
    from the config each step saves beside its output (_config.yaml): search -> (encode) -> index."""
    if run is None:
        return None, None, None
    search = _read_yaml(config_file(run))
    model, queries = search.get("model"), search.get("queries")
    if not model and search.get("query_embeddings"):
        enc = _read_yaml(config_file(paths(search["query_embeddings"])))
        model, queries = enc.get("model"), enc.get("input")
    index_model = None
    if search.get("index"):
        emb = paths(_read_yaml(config_file(paths(search["index"]))).get("embeddings"))
        if emb is not None:
            index_model = _read_yaml(config_file(emb)).get("model")
    return paths(model), paths(queries), paths(index_model)


def model_facts(row: Row) -> None:
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
    if (d / "trials.jsonl").is_file() or ((d / "trials").is_dir() and (d / "base_config.yaml").is_file()):
        return _collect_tune(d)  # a tune output, finished or not
    if (d / "summary.json").is_file() and (d / "model").is_dir():
        return _collect_train(d)
    raise ConfigError(
        f"{d}: not a method run (method-<name>.json), a train output (summary.json + model/) "
        "or a tune output (trials.jsonl, or trials/ while the search runs)"
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
        if st.get("step") == "tune" and rep.search is None and (out / "base_config.yaml").is_file():
            rep.search = _collect_tune(out).search  # a search stage: its trial table and plots
        if st.get("step") != "evaluate":
            continue
        if not is_complete(out) or not (out / "metrics.json").is_file():
            rep.notes.append(f"evaluate stage '{name}' has no complete output yet")
            continue
        metrics = _read_json(out / "metrics.json").get("metrics", {})
        runs[name] = paths(_read_yaml(config_file(out)).get("run"))
        model, queries, index_model = _trace(runs[name], paths)
        label = paths.label(model) if model is not None else name
        about = ""
        if model is not None:
            producer = stages.get(label.split(" ")[0], {})
            about = producer.get("about", "")
        row = Row(label, metrics, name, str(model) if model else None, str(queries) if queries else None,
                  str(index_model) if index_model else None, about)
        qrels = paths(_read_yaml(config_file(out)).get("qrels"))
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



def _collect_train(d: Path) -> Report:
    cfg = _read_yaml(config_file(d))
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


def _trial_lines(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of each trial in a tune output's trials.jsonl."""
    lines = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            t = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, line_no, f"not valid JSON ({e.msg})") from None
        if not isinstance(t, dict) or "trial_id" not in t:
            raise InputError(path, line_no, "expected a JSON object with a 'trial_id'")
        lines.append((line_no, t))
    return lines


def _collect_tune(d: Path) -> Report:
    from densekit.report.search import collect_search

    rep = Report("tune", str(d), d.name)
    metric = None
    base = _read_yaml(d / "base_config.yaml")
    queries = (base.get("eval") or {}).get("queries")
    if (d / "trials.jsonl").is_file():
        lines = _trial_lines(d / "trials.jsonl")
    else:  # the search runs, or was killed: read the trial folders
        from densekit.report.search import trials_so_far

        lines = trials_so_far(d)
        rep.notes.append("the search has not finished: the figures are those of each trial's latest "
                         "checkpoint; run the same `densekit tune` command to resume it")
    for _, t in lines:
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
    rep.search = collect_search(d, base, lines)
    return rep
