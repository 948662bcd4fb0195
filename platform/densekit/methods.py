"""Multi-stage method runs: `densekit run configs/methods/<method>.yaml`.

A method file names its stages in order; each stage is one step with its config (a YAML file, a
mapping of settings, or both). A stage's output is always `<run output>/<stage name>`; a setting
written `@name` or `@name/sub/path` refers to the output of an earlier stage. `${vars.x}` refers to
the method's `vars`, so a small and a full-scale version differ only in their vars and inputs.

The runner resumes: a stage whose output is complete (valid manifest) is skipped, a stage
interrupted part-way is redone (or resumed, for steps that resume inside, like encode and train).
`--from STAGE` reruns that stage and all after it, `--only STAGE` reruns one stage, `--dry-run`
validates every stage's config and prints the stages with their inputs and outputs, without data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035

from densekit.artifacts import is_complete, write_json_atomic
from densekit.config import MISSING, ConfigError, load_config, opt

logger = logging.getLogger(__name__)

STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
REF = re.compile(r"^@([a-z][a-z0-9_]*)(/.*)?$")


@dataclass
class StageConfig:
    """One stage of a method: a step, its config file and/or settings."""

    step: str = opt(MISSING, "the step this stage runs (a `densekit` step name)")
    config: Optional[str] = opt(None, "the step's YAML config (relative to the method file)")
    set: Dict[str, Any] = opt({}, "settings over `config` (nested or dotted keys; '@stage' = its output)")  # noqa: UP006
    about: str = opt("", "one line on what the stage does")


@dataclass
class MethodConfig:
    """A multi-stage method: ordered stages sharing one run folder."""

    name: str = opt(MISSING, "method name")
    about: str = opt("", "what the method does and where it comes from")
    output: str = opt(MISSING, "the run folder; stage S writes <output>/S")
    scale: str = opt("small", "small (generated task, tiny models) or full (the paper's data)")
    data: Dict[str, str] = opt({}, "what the full-scale version expects, name -> description")  # noqa: UP006
    gpu_hours: Optional[float] = opt(None, "estimated GPU hours of the full-scale run")
    vars: Dict[str, Any] = opt({}, "values the stages refer to as ${vars.name}")  # noqa: UP006
    stages: Dict[str, StageConfig] = opt({}, "the stages, in order")  # noqa: UP006
    report: bool = opt(True, "write report.md and quality_vs_speed.png into the run folder at the end")
    report_set: Dict[str, Any] = opt({}, "ReportConfig settings of that report, e.g. {speed: {repeats: 3}}")  # noqa: UP006

    def validate(self) -> None:
        if not self.stages:
            raise ConfigError(f"method '{self.name}' has no stages")
        for name in self.stages:
            if not STAGE_NAME.match(name):
                raise ConfigError(
                    f"stage name '{name}' must be lower-case letters, digits and _ "
                    "(it becomes a folder name under the run output)"
                )


@dataclass
class PlannedStage:
    name: str
    step: str
    output: Path
    overrides: list[str]
    config_path: Optional[Path]
    inputs: dict[str, str]  # dotted key -> path, for --dry-run and the report


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _format_value(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    if v is None:
        return "null"
    return str(v)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def plan(method: MethodConfig, method_file: Path) -> list[PlannedStage]:
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
            if isinstance(value, str) and (m := REF.match(value)):
                ref, sub = m.group(1), m.group(2) or ""
                if ref not in method.stages:
                    raise ConfigError(f"stage '{name}': {key}={value} names no stage")
                if ref not in done:
                    raise ConfigError(f"stage '{name}': {key}={value} refers to a later stage")
                if ".." in Path(sub).parts:
                    raise ConfigError(f"stage '{name}': {key}={value} may not contain '..'")
                value = str(run_dir / ref) + sub
                inputs[key] = value
            elif isinstance(value, str) and ("/" in value or value.endswith((".tsv", ".json", ".jsonl"))):
                inputs[key] = value
            overrides.append(f"{key}={_format_value(value)}")
        overrides.append(f"output={output}")
        config_path = None
        if stage.config:
            config_path = Path(stage.config)
            if not config_path.is_absolute() and not config_path.exists():
                config_path = base / config_path
        cls = STEPS[stage.step].config_cls()
        merged = load_config(cls, config_path, overrides, allow_missing=True)
        # Any other path the step writes must stay inside the run folder (no '..' tricks).
        for key, value in _flatten(_to_plain(merged)).items():
            if key.split(".")[-1].startswith("output") and isinstance(value, str) and value:
                if not _inside(Path(value), run_dir):
                    raise ConfigError(
                        f"stage '{name}': {key}={value} writes outside the run folder {run_dir}"
                    )
        planned.append(PlannedStage(name, stage.step, output, overrides, config_path, inputs))
        done.add(name)
    return planned


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
    method: MethodConfig = load_config(MethodConfig, method_file, args.overrides)
    stages = plan(method, method_file)
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
    status_path = run_dir / "method.json"
    # Every planned stage is listed (the report needs them all, even after --only); a stage
    # skipped as complete keeps the time it took when it ran.
    previous = _previous_status(status_path)
    status: dict[str, Any] = {
        "method": method.name, "file": str(method_file), "output": str(run_dir), "stages": {},
        "order": [s.name for s in stages],  # the JSON file sorts keys: this keeps the stage order
    }  # fmt: skip
    for stage in stages:
        before = previous.get(stage.name, {})
        entry = {"step": stage.step, "output": str(stage.output), "about": method.stages[stage.name].about}
        if before.get("step") == stage.step and "seconds" in before:
            entry["seconds"] = before["seconds"]
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
        if stage.name not in forced and _stage_complete(stage.output):
            logger.info("%s: complete, skipping (%s)", label, stage.output)
            status["stages"][stage.name].pop("pending", None)
            status["stages"][stage.name]["skipped"] = True
            write_json_atomic(status_path, status)
            continue
        logger.info("%s: running -> %s", label, stage.output)
        overrides = list(stage.overrides)
        if stage.name in forced:
            overrides.append("overwrite=true")
        cls = STEPS[stage.step].config_cls()
        cfg = load_config(cls, stage.config_path, overrides)
        start = time.time()
        STEPS[stage.step].function()(cfg)
        seconds = time.time() - start
        logger.info("%s: done in %.0f s", label, seconds)
        entry = status["stages"][stage.name]
        entry.pop("pending", None)
        entry.pop("skipped", None)
        entry["seconds"] = round(seconds, 1)
        write_json_atomic(status_path, status)
    logger.info("method %s: all %d stages complete in %s", method.name, len(stages), run_dir)
    if method.report:
        from densekit.report import report_run

        report_run(run_dir, [f"{k}={_format_value(v)}" for k, v in _flatten(method.report_set).items()])
    return 0


def _previous_status(path: Path) -> dict[str, Any]:
    """The stages recorded by an earlier run of this method in the same folder (if any)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("stages", {})
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return {}


def _stage_complete(output: Path) -> bool:
    """A directory output is complete with a valid manifest; a file output (export) as soon as it
    exists, since files are only ever renamed into place when fully written."""
    return output.is_file() or is_complete(output)


def _print_plan(method: MethodConfig, stages: list[PlannedStage]) -> None:
    # The CLI's own output (like --help), not a log record: --dry-run is a report to the user.
    lines = [f"method {method.name} ({method.scale}): {len(stages)} stages, run folder {method.output}"]
    if method.gpu_hours:
        lines.append(f"estimated GPU hours: {method.gpu_hours:g}")
    for name, about in method.data.items():
        lines.append(f"expects {name}: {about}")
    for i, s in enumerate(stages, 1):
        lines.append(f"{i:>2}. {s.name}: {s.step}" + (f" (config {s.config_path})" if s.config_path else ""))
        for key, value in s.inputs.items():
            lines.append(f"      in  {key} = {value}")
        lines.append(f"      out {s.output}")
    sys.stdout.write("\n".join(lines) + "\n")
