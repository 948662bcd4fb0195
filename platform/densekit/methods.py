"""Multi-stage method runs: `densekit run configs/methods/<method>.yaml`.

A method file names its stages in order; each stage is one step with its config (a YAML file, a
mapping of settings, or both). A stage's output is always `<run output>/<stage name>`; a setting
written `@name` or `@name/sub/path` refers to the output of an earlier stage. `${vars.x}` refers to
the method's `vars`, so a small and a full-scale version differ only in their vars and inputs. A
stage's `config:` may be `@stage/file.yaml`, a file an earlier stage writes (a tune stage's
best_config.yaml): checked in full once it exists.

`include:` puts the stages of other method files first (densekit.config.method_file: the schema
and `load_method`).

The runner resumes: a stage whose output is complete (valid manifest) for the same config is
skipped, a stage interrupted part-way is redone (or resumed, for steps that resume inside, like
encode and train); a complete output made by another config is an error, never reused silently.
`results:` names the evaluate (and speed) stages whose metrics end up in results-<name>.json.
`--from STAGE` reruns that stage and all after it, `--only STAGE` reruns one stage, `--dry-run`
validates every stage's config and prints the stages with their inputs and outputs, without data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional  # noqa: UP035

from densekit import stopping
from densekit.artifacts import is_write_key, write_json_atomic
from densekit.config import ConfigError, load_config
from densekit.config.method_file import REF, MethodConfig, format_value, load_method
from densekit.stage_status import (
    changed_inputs,
    input_fingerprints,
    previous_status,
    stage_complete,
)

logger = logging.getLogger(__name__)

RESULT_FILES = {"evaluate": "metrics.json", "speed": "speed.json"}
# Deeper checks a --dry-run makes on a fully resolved stage config ("module:function(cfg)").
DRY_RUN_CHECKS = {"train": "densekit.train:candidate_modes"}


@dataclass
class PlannedStage:
    name: str
    step: str
    output: Path
    overrides: list[str]
    config_path: Optional[Path]
    inputs: dict[str, str]  # dotted key -> path, for --dry-run and the report
    missing: list[str] = dataclasses.field(default_factory=list)  # required keys left unset
    config_from: Optional[str] = None  # the earlier stage that writes this stage's config (not yet written)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _check_stage(step: str, merged: Any, deep: bool) -> list[str]:
    """Validate a stage's merged config as the step will (types, `validate()`), without data.

    Returns the required keys still unset (a real run then fails at that stage). With `deep`
    (--dry-run), also the step's own checks that need no data, e.g. a train stage's losses and
    candidate modes.
    """
    import importlib

    from omegaconf import OmegaConf

    from densekit.config import missing_keys, validate_tree

    missing = missing_keys(merged)
    if missing:
        return missing
    obj = OmegaConf.to_object(merged)
    validate_tree(obj)
    if deep and step in DRY_RUN_CHECKS:
        module, _, fn = DRY_RUN_CHECKS[step].partition(":")
        getattr(importlib.import_module(module), fn)(obj)
    return []


def _resolve_ref(item: Any, ikey: str, where: str, run_dir: Path, stages, done: set[str],
                 inputs: dict[str, str]) -> Any:
    """`@stage[/sub]` -> <run_dir>/<stage>[/sub], for an earlier stage only; records every input
    (references and paths) in `inputs` under `ikey`. `where` names the setting in errors."""
    if isinstance(item, dict):  # a list of mappings, e.g. score's teachers: [{model: "@ce/model"}]
        return {k: _resolve_ref(v, f"{ikey}.{k}", where, run_dir, stages, done, inputs) for k, v in item.items()}
    if isinstance(item, str) and (m := REF.match(item)):
        ref, sub = m.group(1), m.group(2) or ""
        if ref not in stages:
            raise ConfigError(f"{where}={item} names no stage")
        if ref not in done:
            raise ConfigError(f"{where}={item} refers to a later stage")
        if ".." in Path(sub).parts:
            raise ConfigError(f"{where}={item} may not contain '..'")
        item = str(run_dir / ref) + sub
        inputs[ikey] = item
    elif isinstance(item, str) and ("/" in item or item.endswith((".tsv", ".json", ".jsonl"))):
        inputs[ikey] = item
    return item


def plan(method: MethodConfig, method_file: Path, deep: bool = False) -> list[PlannedStage]:
    """Resolve every stage's config path, settings and references; check them without running."""
    from densekit.cli import STEPS

    run_dir = Path(method.output)
    base = method_file.parent
    planned: list[PlannedStage] = []
    done: set[str] = set()
    for name, stage in method.stages.items():
        if stage.step not in STEPS or stage.step == "run":
            import difflib

            close = difflib.get_close_matches(stage.step, [s for s in STEPS if s != "run"], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"stage '{name}': unknown step '{stage.step}'.{hint}")
        output = run_dir / name
        overrides, inputs = [], {}
        for key, value in _flatten(stage.set).items():
            if key == "output" or key.endswith(".output"):
                raise ConfigError(
                    f"stage '{name}': '{key}' is set by the runner (<run>/{name}); remove it"
                )
            items = value if isinstance(value, list) else [value]
            where = f"stage '{name}': {key}"
            resolved = [
                _resolve_ref(item, f"{key}[{i}]" if isinstance(value, list) else key, where,
                             run_dir, method.stages, done, inputs)
                for i, item in enumerate(items)
            ]
            value = resolved if isinstance(value, list) else resolved[0]
            overrides.append(f"{key}={format_value(value)}")
        overrides.append(f"output={output}")
        config_path, written_by = None, None
        if stage.config and REF.match(stage.config):
            # A config an earlier stage writes (a tune stage's best_config.yaml): checked with the
            # stage's settings alone until that file exists, in full once it does.
            where = f"stage '{name}': config"
            config_path = Path(_resolve_ref(stage.config, "config", where, run_dir, method.stages, done, inputs))
            if not config_path.is_file():
                written_by = REF.match(stage.config).group(1)
        elif stage.config:
            config_path = Path(stage.config)
            if not config_path.is_absolute() and not config_path.exists():
                config_path = base / config_path
        cls = STEPS[stage.step].config_cls()
        try:
            merged = load_config(cls, None if written_by else config_path, overrides, allow_missing=True)
            missing = [] if written_by else _check_stage(stage.step, merged, deep=deep)
        except ConfigError as e:
            raise ConfigError(f"stage '{name}' ({stage.step}): {e}") from None
        _check_writes(name, merged, run_dir)
        planned.append(PlannedStage(name, stage.step, output, overrides, config_path, inputs, missing, written_by))
        done.add(name)
    return planned


def _check_writes(name: str, cfg: Any, run_dir: Path) -> None:
    """Any path the step writes (output*, lookup_cache, margin_mse_tsv: artifacts.is_write_key)
    must stay inside the run folder (no absolute paths elsewhere, no '..' tricks)."""
    for key, value in _flatten(_to_plain(cfg)).items():
        if is_write_key(key) and isinstance(value, str) and value:
            if not _inside(Path(value), run_dir):
                raise ConfigError(f"stage '{name}': {key}={value} writes outside the run folder {run_dir}")


def _to_plain(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def run(argv: list[str]) -> int:
    """densekit run METHOD.yaml [key=value ...] [--from STAGE] [--only STAGE] [--dry-run]

    Runs every stage of a multi-stage method in order, skipping stages whose outputs are complete.
    key=value overrides apply to the method file (e.g. output=runs/x vars.steps=50).
    """
    parser = argparse.ArgumentParser(prog="densekit run", add_help=False)
    parser.add_argument("method")
    parser.add_argument("overrides", nargs="*")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--from", dest="from_stage")
    group.add_argument("--only", dest="only_stage")
    parser.add_argument("--dry-run", action="store_true")
    try:
        # Intermixed: `run M.yaml --only S key=value` works as well as `run M.yaml key=value --only S`.
        args = parser.parse_intermixed_args(argv)
    except SystemExit as e:
        raise ConfigError(f"usage: {run.__doc__.splitlines()[0]}") from e
    method_file = Path(args.method)
    method = load_method(method_file, args.overrides)
    stages = plan(method, method_file, deep=args.dry_run)
    names = [s.name for s in stages]
    for flag in (args.from_stage, args.only_stage):
        if flag is not None and flag not in names:
            raise ConfigError(f"no stage '{flag}' in {method_file}; stages: {', '.join(names)}")

    if args.dry_run:
        _print_plan(method, stages)
        return 0

    from densekit.cli import STEPS

    run_dir = Path(method.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    # One status file per method: several methods may share a run folder (and its common stages).
    status_path = run_dir / f"method-{method.name}.json"
    # Every planned stage is listed (the report needs them all, even after --only); a stage
    # skipped as complete keeps the time it took when it ran.
    previous = previous_status(status_path)
    status: dict[str, Any] = {
        "method": method.name, "file": str(method_file), "output": str(run_dir), "stages": {},
        "order": [s.name for s in stages],  # the JSON file sorts keys: this keeps the stage order
    }  # fmt: skip
    for stage in stages:
        before = previous.get(stage.name, {})
        entry = {"step": stage.step, "output": str(stage.output), "about": method.stages[stage.name].about}
        if before.get("step") == stage.step and "seconds" in before:
            entry["seconds"] = before["seconds"]
        if before.get("step") == stage.step and "inputs" in before:
            entry["inputs"] = before["inputs"]  # kept across --only runs of other stages
        else:
            entry["pending"] = True
        status["stages"][stage.name] = entry
    forced: set[str] = set()
    if args.from_stage:
        forced = set(names[names.index(args.from_stage) :])
    elif args.only_stage:
        forced = {args.only_stage}
    for i, stage in enumerate(stages, 1):
        if args.only_stage and stage.name != args.only_stage:
            continue
        label = f"[{i}/{len(stages)}] {stage.name} ({stage.step})"
        overrides = list(stage.overrides)
        if stage.name in forced:
            overrides.append("overwrite=true")
        cls = STEPS[stage.step].config_cls()
        if stage.config_from and not stage.config_path.is_file():
            raise ConfigError(
                f"stage '{stage.name}' ({stage.step}): its config {stage.config_path} is not there; "
                f"stage '{stage.config_from}' writes it: run that stage first"
            )
        try:
            cfg = load_config(cls, stage.config_path, overrides)
        except ConfigError as e:
            raise ConfigError(f"stage '{stage.name}' ({stage.step}): {e}") from None
        if stage.config_from:  # its config was not there when the stages were planned
            _check_writes(stage.name, cfg, run_dir)
        inputs = input_fingerprints(stage.inputs)
        if stage.name not in forced and stage_complete(stage, cfg):
            changed = changed_inputs(previous.get(stage.name, {}).get("inputs"), inputs)
            if not changed:
                logger.info("%s: complete, skipping (%s)", label, stage.output)
                status["stages"][stage.name].pop("pending", None)
                status["stages"][stage.name]["skipped"] = True
                status["stages"][stage.name]["inputs"] = inputs
                write_json_atomic(status_path, status)
                continue
            # Stale: built from an earlier version of an input (a stage before it was redone).
            logger.info("%s: its input(s) %s changed since it ran: redoing it", label, ", ".join(changed))
            cfg = load_config(cls, stage.config_path, [*overrides, "overwrite=true"])
        stopping.check()  # a stop lost in the stage before must not start this one
        logger.info("%s: running -> %s", label, stage.output)
        start = time.time()
        STEPS[stage.step].function()(cfg)
        seconds = time.time() - start
        logger.info("%s: done in %.0f s", label, seconds)
        entry = status["stages"][stage.name]
        entry.pop("pending", None)
        entry.pop("skipped", None)
        entry["seconds"] = round(seconds, 1)
        entry["inputs"] = inputs
        write_json_atomic(status_path, status)
    logger.info("method %s: all %d stages complete in %s", method.name, len(stages), run_dir)
    if method.results and not args.only_stage:
        collect_results(method, stages)
    if method.report:
        from densekit.report import report_run

        report_run(run_dir, [f"{k}={format_value(v)}" for k, v in _flatten(method.report_set).items()])
    return 0


def collect_results(method: MethodConfig, stages: list[PlannedStage]) -> dict:
    """Gather the result stages' metrics.json / speed.json into <output>/results-<name>.json and
    log them as a table."""

    by_name = {s.name: s for s in stages}
    results: dict[str, Any] = {}
    for label, ref in method.results.items():
        stage = by_name[ref[1:]]
        path = stage.output / RESULT_FILES[stage.step]
        results[label] = {"stage": stage.name, "step": stage.step, **json.loads(path.read_text())}
    out = {"method": method.name, "scale": method.scale, "results": results}
    write_json_atomic(Path(method.output) / f"results-{method.name}.json", out)
    for label, r in results.items():
        if r["step"] == "evaluate":
            shown = ", ".join(f"{k}={v:.4f}" for k, v in r["metrics"].items() if k in ("ndcg@10", "mrr@10", "recall@100"))
        else:
            shown = ", ".join(f"{Path(m['model']).parent.name}: {m['texts_per_s']:.0f}/s ({m['speedup']:.2f}x)" for m in r["models"])
        logger.info("method %s: %-22s %s", method.name, label, shown)
    return out


def _print_plan(method: MethodConfig, stages: list[PlannedStage]) -> None:
    # The CLI's own output (like --help), not a log record: --dry-run is a report to the user.
    lines = [f"method {method.name} ({method.scale}): {len(stages)} stages, run folder {method.output}"]
    if method.gpu_hours:
        lines.append(f"estimated GPU hours: {method.gpu_hours:g}")
    for name, about in method.data.items():
        lines.append(f"expects {name}: {about}")
    for i, s in enumerate(stages, 1):
        lines.append(f"{i:>2}. {s.name}: {s.step}" + (f" (config {s.config_path})" if s.config_path else ""))
        if s.config_from:
            lines.append(f"      config written by stage '{s.config_from}': checked in full once it exists")
        for key, value in s.inputs.items():
            lines.append(f"      in  {key} = {value}")
        lines.append(f"      out {s.output}")
        if s.missing:
            lines.append(f"      unset {', '.join(s.missing)} (required: set them before a real run)")
    for label, ref in method.results.items():
        lines.append(f"result {label}: {ref}")
    sys.stdout.write("\n".join(lines) + "\n")
