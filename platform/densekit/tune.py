"""`densekit tune`: search a train config with Ray Tune, one `densekit train` run per trial.

Train V2 pattern: each trial is a Tune *function* trainable that drives a TorchTrainer (`train.fit`)
whose RunConfig carries a TuneReportCallback. The trial itself holds no CPU, so on a small machine
its Train workers get every core. Outputs: trials/<trial id>/ (each trial's train output),
trials.jsonl, best_config.yaml, best/ (the best trial's best model), search/ (Tune state), manifest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from ray import tune as ray_tune
from ray.tune.integration.ray_train import TuneReportCallback

from densekit.artifacts import (
    atomic_path,
    config_to_yaml,
    is_complete,
    prepare_output,
    write_manifest,
    write_text_atomic,
)
from densekit.config import TrainConfig, TuneConfig, load_config
from densekit.errors import ConfigError, DensekitError

logger = logging.getLogger(__name__)

# Sampler name (config.SEARCH_SAMPLERS) -> the ray.tune function it stands for. choice and grid take
# the list of values itself; the others take their argument list spread out.
SAMPLERS = {
    "uniform": ray_tune.uniform,
    "quniform": ray_tune.quniform,
    "loguniform": ray_tune.loguniform,
    "qloguniform": ray_tune.qloguniform,
    "randint": ray_tune.randint,
    "choice": ray_tune.choice,
    "grid": ray_tune.grid_search,
}
# Keys a trial sets itself: its own output folder, and the metric that picks its best checkpoint.
RESERVED_KEYS = ("output", "overwrite", "eval.metric")
# A trial only drives its Train run (the workers hold the CPUs and GPUs). Ray refuses an empty
# resource request, so the trial asks for a little memory instead of the default 1 CPU, which on a
# 2-CPU machine would starve its own 1-CPU worker.
TRIAL_RESOURCES = {"CPU": 0, "memory": 256 * 2**20}
RETRAIN_DIR = "retrain"  # the `output` written into best_config.yaml
TEACHER_CACHE = "_teacher_cache"  # share_teacher: the frozen teacher's embeddings, read by every trial
BASE_CONFIG = "base_config.yaml"  # the base train config as resolved when the search started


# --- the search space ------------------------------------------------------------------------------


def param_space(cfg: TuneConfig) -> dict[str, Any]:
    """{dotted key: ray.tune domain}: flat keys, so a trial's config maps straight to overrides."""
    space = {}
    for key, (name, args) in cfg.search_space().items():
        space[key] = SAMPLERS[name](args) if name in ("choice", "grid") else SAMPLERS[name](*args)
    return space


def _probe_values(name: str, args: list) -> list:
    """Values that stand for a sampler when checking its key: every choice, or both bounds."""
    if name in ("choice", "grid"):
        return list(args)
    if name == "randint":  # high is exclusive
        return [args[0], args[1] - 1]
    return [args[0], args[1]]


def _override_value(value: Any) -> str:
    """A sampled value as the right-hand side of a `key=value` override (parsed as YAML)."""
    if hasattr(value, "item"):  # numpy scalars from the samplers
        value = value.item()
    if hasattr(value, "tolist"):
        value = value.tolist()
    return json.dumps(value)  # JSON is YAML: floats, lists, quoted strings, null, true/false


def trial_overrides(
    base_overrides: list[str], params: dict[str, Any], metric: str, output: str | Path
) -> list[str]:
    """The overrides that turn the base train config into one trial's config."""
    return [
        *base_overrides,
        *(f"{key}={_override_value(v)}" for key, v in params.items()),
        f"eval.metric={metric}",
        f"output={output}",
        "overwrite=false",
    ]


def _with_teacher_cache(cfg: TuneConfig, base_cfg: TrainConfig, out: Path) -> list[str]:
    """The trials' overrides, with `teacher_cache` in the search's folder when trials share the
    teacher (they see the same batches: the same data, seed and batch size)."""
    overrides = cfg.override_list()
    if cfg.share_teacher and not base_cfg.teacher_cache:
        overrides.append(f"teacher_cache={out / TEACHER_CACHE}")
    return overrides


def check_space(cfg: TuneConfig, base: str, metric: str) -> tuple[TrainConfig, list[TrainConfig]]:
    """Load the base config, then apply every search key with values standing for its sampler.

    Fails (ConfigError) on an unknown key, with a did-you-mean, or on a value the key cannot take,
    or on losses whose parameters do not fit, before any trial starts.

    Returns:
        (the base TrainConfig, one TrainConfig per probed value).
    """
    from densekit.train import candidate_modes

    overrides = cfg.override_list()
    for item in overrides:
        if item.split("=", 1)[0].strip() in RESERVED_KEYS:
            raise ConfigError(
                f"tune overrides: '{item}': {', '.join(RESERVED_KEYS)} are set per trial"
            )
    probe_out = Path(cfg.output) / "trials" / "probe"
    try:
        base_cfg = load_config(TrainConfig, base, trial_overrides(overrides, {}, metric, probe_out))
    except ConfigError as e:
        raise ConfigError(f"tune base config {base} with overrides {overrides}: {e}") from None
    if not base_cfg.eval.every:
        raise ConfigError(
            f"tune picks trials by the periodic evaluation: set eval.every (with eval.queries, eval.qrels "
            f"and eval.corpus or eval.index) in {base} or in the tune overrides"
        )
    candidate_modes(base_cfg)
    probes = []
    for key, (name, args) in cfg.search_space().items():
        if key in RESERVED_KEYS:
            raise ConfigError(
                f"space.{key}: {', '.join(RESERVED_KEYS)} are set per trial, not searched"
            )
        for value in _probe_values(name, args):
            try:
                probe = load_config(
                    TrainConfig,
                    base,
                    trial_overrides(overrides, {key: value}, metric, probe_out),
                )
                candidate_modes(probe)  # builds the losses: a bad loss parameter fails here
            except ConfigError as e:
                raise ConfigError(f"space.{key} ({name}, value {value!r}): {e}") from None
            except TypeError as e:  # a loss constructor given an unknown parameter
                raise ConfigError(f"space.{key} ({name}, value {value!r}): {e}") from None
            probes.append(probe)
    return base_cfg, probes


# --- one trial -------------------------------------------------------------------------------------


class EvalReportCallback(TuneReportCallback):
    """TuneReportCallback that passes on only the reports holding the evaluation metric.

    Train also reports at checkpoints between evaluations (`checkpoint_every`); Tune rejects a
    result without the metric it optimises, and ASHA should rank trials at evaluations only.
    """

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and self.metric in metrics[0]:  # metrics[0]: rank 0, which evaluates
            super().after_report(run_context, metrics, checkpoint)


def train_trial(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """Tune function trainable: one `densekit train` run with this trial's sampled values.

    Args:
        params: {dotted TrainConfig key: sampled value}.
        spec: {"base": base config path, "overrides", "metric", "trials": trials folder, "cwd"}.
    """
    from densekit.logs import setup_logging
    from densekit.train import fit

    setup_logging()
    # Tune runs each trial in a folder of its own; relative paths in the base config mean the
    # folder `densekit tune` was started from (when this node has it: use absolute paths on a cluster).
    if Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])
    trial_id = ray_tune.get_context().get_trial_id()
    out = Path(spec["trials"]) / trial_id
    cfg = load_config(
        TrainConfig, spec["base"], trial_overrides(spec["overrides"], params, spec["metric"], out)
    )
    result = fit(cfg, callbacks=[EvalReportCallback(spec["metric"])])
    if result is None:
        # The run had finished before the search was interrupted: hand Tune its evaluations again.
        for row in _history(out):
            if spec["metric"] in row:
                ray_tune.report(row)


def _history(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# --- the search ------------------------------------------------------------------------------------


def tune(cfg: TuneConfig) -> None:
    """Run the search `cfg` describes (or resume it); write the best config and model."""
    search(cfg)
    if cfg.report:
        from densekit.report import report_run

        report_run(cfg.output)


def search(cfg: TuneConfig, callbacks: list | None = None) -> None:
    """`tune` with extra Tune callbacks on the driver (tests use one to interrupt a search)."""
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from densekit.metrics import parse_metric
    from densekit.raycluster import init_ray
    from densekit.train import check_inputs

    out = Path(cfg.output).resolve()
    base = str(Path(cfg.base).resolve())
    metric = parse_metric(cfg.metric).name
    base_cfg, probes = check_space(cfg, base, metric)
    if cfg.share_teacher and base_cfg.teacher is None:
        raise ConfigError(f"share_teacher=true: {base} has no online teacher (teacher:) for the trials to share")
    rung = base_cfg.eval.every  # ASHA's unit: one evaluation round
    max_t = max(c.optim.max_steps for c in [base_cfg, *probes])
    if cfg.scheduler == "asha" and cfg.grace_period * rung >= max_t:
        # At max_steps itself a rung could only stop trials that have finished (asha_scheduler).
        raise ConfigError(
            f"grace_period={cfg.grace_period} evaluation rounds of {rung} steps "
            f"{'exceed' if cfg.grace_period * rung > max_t else 'reach'} max_steps={max_t}: ASHA would "
            "have no rung before the end; lower grace_period or eval.every, or set scheduler=none"
        )
    # The tune config names its base by path: a search is the same only if the base still
    # resolves to the same train config (kept as base_config.yaml).
    resolved = config_to_yaml(base_cfg)
    kept = out / BASE_CONFIG
    if kept.is_file() and kept.read_text() != resolved and not cfg.overwrite:
        raise ConfigError(
            f"{out} holds a search of another version of {base} (see {kept}); "
            "pass overwrite=true or choose another output"
        )
    if not prepare_output(out, cfg, overwrite=cfg.overwrite, keep_partial=True):
        return
    write_text_atomic(kept, resolved)
    check_inputs(base_cfg)
    init_ray(base_cfg.resources)

    spec = {
        "base": base,
        "overrides": _with_teacher_cache(cfg, base_cfg, out),
        "metric": metric,
        "trials": str(out / "trials"),
        "cwd": os.getcwd(),
    }
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(train_trial, spec=spec), TRIAL_RESOURCES
    )
    experiment = out / "search"
    if ray_tune.Tuner.can_restore(str(experiment)):
        logger.info("tune: resuming the interrupted search in %s", experiment)
        tuner = ray_tune.Tuner.restore(
            str(experiment), trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        scheduler = asha_scheduler(cfg, rung, max_t) if cfg.scheduler == "asha" else FIFOScheduler()
        concurrent = cfg.max_concurrent_trials or _cluster_fit(base_cfg)
        logger.info(
            "tune: %d trial(s) of %s over %s, %d at once, %s, maximising %s -> %s",
            cfg.num_trials, base, ", ".join(cfg.search_space()), concurrent, cfg.scheduler, metric, out,
        )  # fmt: skip
        tuner = ray_tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=ray_tune.TuneConfig(
                metric=metric,
                mode=cfg.mode,
                num_samples=cfg.num_trials,
                scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrent),
            ),
            run_config=ray_tune.RunConfig(
                name="search",
                storage_path=str(out),
                failure_config=ray_tune.FailureConfig(max_failures=cfg.max_failures),
                callbacks=list(callbacks or []),
                verbose=1,
            ),
        )
    # Ray Tune takes Ctrl-C itself while it runs (its own SIGINT handler): it ends the trials that
    # run, marks them TERMINATED like the ones ASHA stopped, and returns from fit as if the search
    # were done; densekit would then write a best config of a search that never finished. Leave
    # Ctrl-C to densekit: it stops the search as a kill does, and the same command resumes it.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    grid = tuner.fit()
    unfinished = [t for t in grid._experiment_analysis.trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished:
        logger.warning("tune: stopped with %d trial(s) not finished; nothing written", len(unfinished))
        raise KeyboardInterrupt
    rows = _trial_rows(grid, cfg, metric, spec)
    _write_outputs(out, rows, metric, spec)


def _cluster_fit(base_cfg: TrainConfig) -> int:
    """Trials whose Train workers the cluster holds at once (its CPUs, or GPUs with use_gpu)."""
    import ray

    res = base_cfg.resources
    total = ray.cluster_resources()
    if res.use_gpu:
        need, have = res.num_workers * res.gpus_per_worker, total.get("GPU", 0.0)
    else:
        need, have = res.num_workers * res.cpus_per_worker, total.get("CPU", 0.0)
    return max(1, int(have // need)) if need else 1


def _trial_rows(grid, cfg: TuneConfig, metric: str, spec: dict) -> list[dict]:
    """One row per trial: its values, status, and its metric at its best evaluation."""
    rows = []
    # ResultGrid keeps the Trial objects (id, status) beside the results, in the same order.
    for trial, result in zip(grid._experiment_analysis.trials, grid):
        if trial.status not in ("TERMINATED", "ERROR"):
            raise DensekitError(
                f"tune: trial {trial.trial_id} is {trial.status}: the search did not finish; "
                "run the same command again to resume it"
            )
        params = {k: trial.config[k] for k in cfg.search_space()}
        out = Path(spec["trials"]) / trial.trial_id
        train_cfg = load_config(
            TrainConfig, spec["base"], trial_overrides(spec["overrides"], params, metric, out)
        )
        df = result.metrics_dataframe
        evals = [] if df is None or metric not in df else df[df[metric].notna()].to_dict("records")
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "params": {k: _plain(v) for k, v in params.items()},
            "output": str(out),
            "max_steps": train_cfg.optim.max_steps,
            "steps": int(evals[-1]["step"]) if evals else 0,
            "metric": metric,
            "best": None,
            "best_step": None,
            "last": float(evals[-1][metric]) if evals else None,
            "history": [{"step": int(e["step"]), metric: float(e[metric])} for e in evals],
            # Tune's clock of the trial up to its last evaluation (a resumed trial's time adds up).
            "seconds": _seconds(evals[-1]) if evals else None,
            "error": None,
        }
        if evals:
            # The first evaluation reaching the maximum: the one train kept as best/ (strict >).
            best = max(evals, key=lambda e: (float(e[metric]), -int(e["step"])))
            row.update(best=float(best[metric]), best_step=int(best["step"]))
            row["_checkpoint"] = best.get("checkpoint_path")
        if trial.status == "ERROR":
            row["status"] = "error"
            row["error"] = (
                str(result.error).strip().splitlines()[-1][:500]
                if result.error
                else "unknown error"
            )
        else:
            row["status"] = "finished" if row["steps"] >= row["max_steps"] else "stopped"
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def _seconds(result: dict) -> float | None:
    v = result.get("time_total_s")
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _plain(v: Any) -> Any:
    return json.loads(_override_value(v))


def asha_scheduler(cfg: TuneConfig, rung: int, max_steps: int):
    """ASHA over Train's optimizer step, stopping a trial only before its last step.

    ASHA puts a rung wherever grace x reduction_factor^k falls; when that is max_steps itself (300
    steps, rungs of 100, factor 3) it stopped a trial at its final report, which cut the trial's
    export (model/, best/, manifest) for nothing: the trial had done its work. So its max_t is one
    step short of max_steps (no rung at the end), and stop_last_trials=False lets trials run on.
    """
    from ray.tune.schedulers import ASHAScheduler

    grace = cfg.grace_period * rung
    return ASHAScheduler(
        time_attr="step",  # Train's optimizer step: the same after a resumed trial
        max_t=max(max_steps - 1, grace),
        grace_period=grace,
        reduction_factor=cfg.reduction_factor,
        stop_last_trials=False,  # a trial at max_steps ends by itself, after its export
    )


def _best_row(rows: list[dict]) -> dict:
    from densekit.report.search import best_trial  # the rule the tune report reads back

    best = best_trial(rows)
    if best is None:
        errors = "; ".join(f"{r['trial_id']}: {r['error']}" for r in rows if r["error"])
        raise DensekitError(
            f"tune: no trial reported {rows[0]['metric'] if rows else 'the metric'} ({errors})"
        )
    return best


def _best_model_dir(row: dict) -> Path:
    """Where the best trial's best model is: its train output's best/ if it finished, else the
    checkpoint of its best evaluation (ASHA stopped it: no export was written)."""
    trial_out = Path(row["output"])
    if is_complete(trial_out) and (trial_out / "best").is_dir():
        return trial_out / "best"
    ckpt = row.get("_checkpoint")
    for sub in ("best", "model"):
        if ckpt and (Path(ckpt) / sub).is_dir():
            return Path(ckpt) / sub
    raise DensekitError(
        f"tune: the checkpoint of trial {row['trial_id']} at step {row['best_step']} is gone ({ckpt})"
    )


def _write_outputs(out: Path, rows: list[dict], metric: str, spec: dict) -> None:
    best = _best_row(rows)
    with atomic_path(out / "trials.jsonl") as tmp:
        tmp.write_text(
            "".join(
                json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n"
                for r in rows
            )
        )
    best_cfg = load_config(
        TrainConfig,
        spec["base"],
        trial_overrides(spec["overrides"], best["params"], metric, out / RETRAIN_DIR),
    )
    header = (
        f"# Best of `densekit tune` in {out}: trial {best['trial_id']}, {metric}={best['best']:.4f} at step "
        f"{best['best_step']}.\n# Train it again (e.g. longer, with optim.max_steps=...):\n"
        f"#   densekit train {out / 'best_config.yaml'} output=<new folder>\n"
    )
    write_text_atomic(out / "best_config.yaml", header + config_to_yaml(best_cfg))
    with atomic_path(out / "best") as tmp:
        shutil.copytree(_best_model_dir(best), tmp)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped", "error")}
    write_manifest(
        out,
        "tune",
        {
            "metric": metric,
            "best_trial": best["trial_id"],
            "best": best["best"],
            "best_step": best["best_step"],
            "trials": counts,
        },
        exclude=("search/", "trials/", f"{TEACHER_CACHE}/"),
    )
    logger.info(
        "tune: best trial %s, %s=%.4f at step %d (%s); %s",
        best["trial_id"], metric, best["best"], best["best_step"], best["params"], counts,
    )  # fmt: skip
