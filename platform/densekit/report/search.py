"""The search part of a tune report: every trial's values, status and curve, the chosen config, the
default config's trial and the gain over it, the time the search took; two plots (each trial's dev
metric against training steps, and its best dev metric against each searched value).

Read from the files `densekit tune` writes (trials.jsonl, base_config.yaml, _manifest.json), and
for searches recorded before trials.jsonl kept trial times, from Tune's own search/ folder.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from densekit.errors import InputError

logger = logging.getLogger(__name__)

CURVES_PNG, SPACE_PNG = "tune_curves.png", "tune_space.png"
MAX_CURVE_COLUMNS = 12  # evaluation steps shown in the trial table (evenly picked when there are more)


def _dotted(tree: dict, key: str) -> Any:
    """tree["a"]["b"] for key "a.b" (None where the base config does not set it)."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _trial_seconds(search_dir: Path) -> dict[str, float]:
    """{trial id: seconds it ran} from Tune's result.json files (each line one report)."""
    seconds: dict[str, float] = {}
    for f in search_dir.glob("*/result.json"):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: the earlier reports still count
            if "trial_id" in r and "time_total_s" in r:
                seconds[r["trial_id"]] = max(seconds.get(r["trial_id"], 0.0), float(r["time_total_s"]))
    return seconds


STATE_FILE = "trainer_state.json"  # densekit.train.checkpoints.STATE_FILE (that module imports torch)


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _latest_state(trial_out: Path) -> dict:
    """The trainer state of a trial's newest complete checkpoint ({} if it has none yet)."""
    states = []
    for f in (trial_out / "checkpoints").glob(f"*/{STATE_FILE}"):
        try:
            states.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue  # a checkpoint being written or removed
    return max(states, key=lambda st: st.get("step", 0), default={})


def trials_so_far(d: Path) -> list[tuple[int, dict]]:
    """Rows shaped like trials.jsonl's for a search that has not finished (running, or killed and
    not resumed yet), read from each trial's folder: its config (the searched values), its
    evaluations (metrics.jsonl once its training ended, else its newest checkpoint's state).
    Status: "finished" when its training ended, else "unfinished" (running, waiting, or stopped
    by ASHA: only Tune's own state tells those apart, and it is written when the search ends)."""
    search_cfg = _read_yaml(d / "_config.yaml")
    keys, metric = list(search_cfg.get("space") or {}), search_cfg.get("metric", "ndcg@10")
    rows = []
    for out in sorted(p for p in (d / "trials").glob("*") if (p / "_config.yaml").is_file()):
        cfg = _read_yaml(out / "_config.yaml")
        if (out / "summary.json").is_file() and (out / "metrics.jsonl").is_file():
            status = "finished"
            history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
        else:
            status, history = "unfinished", _latest_state(out).get("history", [])
        evals = [{"step": int(h["step"]), metric: float(h[metric])} for h in history if h.get(metric) is not None]
        best = max(evals, key=lambda e: (e[metric], -e["step"]), default=None)
        rows.append((0, {
            "trial_id": out.name, "params": {k: _dotted(cfg, k) for k in keys}, "status": status,
            "metric": metric, "output": str(out), "steps": evals[-1]["step"] if evals else 0,
            "max_steps": _dotted(cfg, "optim.max_steps"), "history": evals,
            "best": best[metric] if best else None, "best_step": best["step"] if best else None,
        }))
    return rows


def best_trial(trials: list[dict]) -> dict | None:
    """The rule `densekit tune` chooses by: the highest best metric, then the earlier best step,
    then the lower trial id (None if no trial has a finite metric)."""
    scored = [t for t in trials if t.get("best") is not None and math.isfinite(t["best"])]
    return min(scored, key=lambda t: (-t["best"], t["best_step"], t["trial_id"])) if scored else None


def _chosen(trials: list[dict], manifest: dict) -> dict | None:
    """The trial `densekit tune` chose (its manifest), else by its rule (`best_trial`)."""
    by_id = {t["trial_id"]: t for t in trials}
    if manifest.get("best_trial") in by_id:
        return by_id[manifest["best_trial"]]
    return best_trial(trials)


def collect_search(d: Path, base: dict, lines: list[tuple[int, dict]]) -> dict:
    """The search summary of tune output `d` from its trials.jsonl rows (line number, row)."""
    from densekit.artifacts import read_manifest

    manifest = read_manifest(d) if (d / "_manifest.json").is_file() else {}
    recorded = _trial_seconds(d / "search") if (d / "search").is_dir() else {}
    trials, keys = [], []
    for line_no, t in lines:
        for field in ("params", "status"):  # trial_id: checked by the caller
            if field not in t:
                raise InputError(d / "trials.jsonl", line_no, f"a trial row needs '{field}'")
        for k in t["params"]:
            if k not in keys:
                keys.append(k)
        seconds = t.get("seconds", recorded.get(t["trial_id"]))
        trials.append({**{k: t.get(k) for k in ("trial_id", "params", "status", "steps", "max_steps",
                                                 "best", "best_step", "error")},
                       "history": t.get("history") or [], "seconds": seconds})
    metric = next((t.get("metric") for _, t in lines if t.get("metric")), "ndcg@10")
    res = base.get("resources") or {}
    per_trial = res.get("num_workers", 1) * (
        res.get("gpus_per_worker", 1) if res.get("use_gpu") else res.get("cpus_per_worker", 1)
    )
    default = {k: _dotted(base, k) for k in keys}
    default_trial = next((t for t in trials if all(t["params"].get(k) == v for k, v in default.items())), None)
    chosen = _chosen(trials, manifest)
    timed = [t["seconds"] for t in trials if t["seconds"] is not None]
    total = sum(timed) if len(timed) == len(trials) else None
    gain = None
    if chosen and default_trial and default_trial.get("best") is not None:
        gain = chosen["best"] - default_trial["best"]
    return {
        "metric": metric,
        "keys": keys,
        "trials": trials,
        "counts": {s: n for s in ("finished", "stopped", "error", "unfinished")  # unfinished: only if any
                   if (n := sum(t["status"] == s for t in trials)) or s != "unfinished"},
        "default": default,
        "default_trial": default_trial["trial_id"] if default_trial else None,
        "chosen": chosen["trial_id"] if chosen else None,
        "gain_over_default": gain,
        "best_config": str(d / "best_config.yaml") if (d / "best_config.yaml").is_file() else None,
        "trial_seconds": total,
        "resource_per_trial": per_trial,
        "resource": "GPU" if res.get("use_gpu") else "CPU",
    }


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if not isinstance(v, str) else v


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in params.items())


def _legend(params: dict) -> str:
    """A trial's label in a plot: its values (with their keys only when several are searched)."""
    if len(params) == 1:
        return _fmt_value(next(iter(params.values())))
    return _fmt_params(params)


def _curve_steps(trials: list[dict]) -> list[int]:
    steps = sorted({h["step"] for t in trials for h in t["history"]})
    if len(steps) <= MAX_CURVE_COLUMNS:
        return steps
    pick = {round(i * (len(steps) - 1) / (MAX_CURVE_COLUMNS - 1)) for i in range(MAX_CURVE_COLUMNS)}
    return [s for i, s in enumerate(steps) if i in pick]


def render_search(s: dict, plots: list[str]) -> list[str]:
    """The Markdown lines of the search section."""
    from densekit.logs import format_duration

    metric, trials, c = s["metric"], s["trials"], s["counts"]
    by_id = {t["trial_id"]: t for t in trials}
    max_steps = max((t["max_steps"] or 0 for t in trials), default=0)
    out = ["## Search", "",
           f"{len(trials)} trials over {', '.join(s['keys']) or 'no searched key'}, maximising dev {metric}: "
           f"{c['finished']} ran to the end ({max_steps} steps), {c['stopped']} stopped early by ASHA, "
           f"{c['error']} failed."]
    if c.get("unfinished"):
        out[-1] = (f"**The search has not finished** (no trials.jsonl yet; run the same `densekit tune` "
                   f"command to resume it): {c['unfinished']} of these trials are running, waiting or were "
                   f"stopped by ASHA, as far as their folders tell; their figures are those of their latest "
                   f"checkpoint. " + out[-1])
    if s["trial_seconds"] is not None:
        used = s["trial_seconds"] * s["resource_per_trial"]
        out[-1] += (f" Trial time {format_duration(s['trial_seconds'])} in all; "
                    f"{s['resource']} time held by the trials {format_duration(used)} "
                    f"({s['resource_per_trial']:g} {s['resource']} per trial).")
    out.append("")
    chosen = by_id.get(s["chosen"])
    if chosen:
        where = f" (`{Path(s['best_config']).name}`)" if s["best_config"] else ""
        label = "Best so far" if c.get("unfinished") else "Chosen"
        out.append(f"- **{label}**: trial {chosen['trial_id']}, {_fmt_params(chosen['params'])}: "
                   f"{metric} {chosen['best']:.4f} at step {chosen['best_step']}{where}.")
    dflt = _fmt_params(s["default"])
    if s["default_trial"]:
        d = by_id[s["default_trial"]]
        best = "–" if d["best"] is None else f"{d['best']:.4f}"
        out.append(f"- **Default** (the base config's {dflt}): trial {d['trial_id']}, {metric} {best}"
                   + (f"; the search's gain over it: {s['gain_over_default']:+.4f} on dev."
                      if s["gain_over_default"] is not None else "."))
    else:
        out.append(f"- **Default** (the base config's {dflt}): not among the trials, so no gain over it is "
                   "measured here; train the base config alone to compare.")
    out.append("")
    steps = _curve_steps(trials)
    head = ["trial", *s["keys"], "status", "steps", f"best {metric}", "best step",
            *(f"@{st}" for st in steps), "time"]
    out += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * (len(s["keys"]) + 2) + ["--:"] * (len(head) - len(s["keys"]) - 2)) + "|"]
    for t in trials:
        at = {h["step"]: h.get(metric) for h in t["history"]}
        mark = " (chosen)" if t["trial_id"] == s["chosen"] else ""
        mark += " (default)" if t["trial_id"] == s["default_trial"] else ""
        cells = [t["trial_id"] + mark, *(_fmt_value(t["params"].get(k)) for k in s["keys"]), t["status"],
                 str(t["steps"] or 0), "–" if t["best"] is None else f"{t['best']:.4f}",
                 str(t["best_step"] or "–"),
                 *("" if at.get(st) is None else f"{at[st]:.4f}" for st in steps),
                 "–" if t["seconds"] is None else format_duration(t["seconds"])]
        out.append("| " + " | ".join(cells) + " |")
    errors = [f"- {t['trial_id']}: {t['error']}" for t in trials if t.get("error")]
    if errors:
        out += ["", "Failed trials:", "", *errors]
    out += ["", f"Columns @N: dev {metric} at step N (empty: the trial had stopped)."]
    out += [f"\n![{name}]({name})" for name in plots]
    out.append("")
    return out


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_search(s: dict, out: Path) -> list[str]:
    """Write tune_curves.png and tune_space.png into `out`; the names written."""
    trials = [t for t in s["trials"] if t["history"]]
    if not trials:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from densekit.artifacts import atomic_path

    metric = s["metric"]
    written = []

    def save(fig, name):
        with atomic_path(out / name) as tmp, open(tmp, "wb") as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=120)
    # Past 10 trials the default colour cycle repeats: 20 distinct colours, then repeats.
    colors = plt.get_cmap("tab20" if len(trials) > 10 else "tab10").colors
    for i, t in enumerate(trials):
        xs = [h["step"] for h in t["history"]]
        ys = [h[metric] for h in t["history"]]
        chosen = t["trial_id"] == s["chosen"]
        ax.plot(xs, ys, marker="o", ms=3, lw=2.4 if chosen else 1.0, color=colors[i % len(colors)],
                ls="--" if t["status"] == "stopped" else "-", zorder=3 if chosen else 2,
                label=_legend(t["params"]) + (" (chosen)" if chosen else ""))
    ax.set_xlabel("training step")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{len(s['trials'])} trials over {', '.join(s['keys'])} (dashed: stopped by ASHA)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(trials) <= 16:
        ax.legend(fontsize=6, loc="lower right", ncol=2 if len(trials) > 8 else 1)
    fig.tight_layout()
    save(fig, CURVES_PNG)

    keys = s["keys"]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(5.6 * len(keys), 4.2), dpi=120, squeeze=False)
        for ax, key in zip(axes[0], keys):
            scored = [t for t in trials if t["best"] is not None]
            values = [t["params"].get(key) for t in scored]
            if _numeric(values):
                xs = [float(v) for v in values]
                if min(xs) > 0 and max(xs) / min(xs) > 20:
                    ax.set_xscale("log")
            else:  # layer maps, names: one position per distinct value, in sorted order
                cats = sorted({json.dumps(v) for v in values}, key=lambda c: (len(c), c))
                pos = {c: i for i, c in enumerate(cats)}
                xs = [pos[json.dumps(v)] for v in values]
                ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=7)
            ys = [t["best"] for t in scored]
            done = [t["status"] == "finished" for t in scored]
            ax.scatter([x for x, f in zip(xs, done) if f], [y for y, f in zip(ys, done) if f],
                       color="tab:blue", label="ran to the end", zorder=3)
            ax.scatter([x for x, f in zip(xs, done) if not f], [y for y, f in zip(ys, done) if not f],
                       facecolors="none", edgecolors="tab:gray", label="stopped early", zorder=3)
            for x, y, t in zip(xs, ys, scored):
                if t["trial_id"] == s["chosen"]:
                    ax.scatter([x], [y], marker="*", s=180, color="tab:red", label="chosen", zorder=4)
                if t["trial_id"] == s["default_trial"]:
                    ax.annotate("default", (x, y), xytext=(4, -12), textcoords="offset points", fontsize=8)
            ax.set_xlabel(key)
            ax.set_ylabel(f"best dev {metric}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, SPACE_PNG)
    return written
