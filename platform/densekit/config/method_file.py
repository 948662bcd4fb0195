"""Method files: their schema (`MethodConfig`, `StageConfig`) and `load_method`, which merges a file
with the files it includes. Running one is densekit.methods' part.

`include:` puts the stages of other method files first: the small methods share one generated
task, one warm-up and one baseline through configs/methods/small_common.yaml, and run in one
folder, so a stage another method already finished is reused. An included file's vars are the
including file's defaults (its own stages may use them); the including file's vars, and the
command line's, override the included files' vars of the same name.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from densekit.config.loader import load_config, opt, unknown_name
from densekit.errors import ConfigError

STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
REF = re.compile(r"^@([a-z][a-z0-9_]*)(/.*)?$")
_STAGE_KEY = re.compile(r"^~?stages\.([a-z][a-z0-9_]*)[.=]")  # a dotlist override of one stage
RESULT_STEPS = ("evaluate", "speed")


@dataclass
class StageConfig:
    """One stage of a method: a step, its config file and/or settings."""

    step: str = opt(MISSING, "the step this stage runs (a `densekit` step name)")
    config: Optional[str] = opt(
        None, "the step's YAML config (relative to the method file), or '@stage/file.yaml': a file an "
        "earlier stage writes, e.g. a tune stage's best_config.yaml"
    )
    set: Dict[str, Any] = opt({}, "settings over `config` (nested or dotted keys; '@stage' = its output)")  # noqa: UP006
    about: str = opt("", "one line on what the stage does")


@dataclass
class MethodConfig:
    """A multi-stage method: ordered stages sharing one run folder."""

    name: str = opt(MISSING, "method name")
    about: str = opt("", "what the method does and where it comes from")
    output: str = opt(MISSING, "the run folder; stage S writes <output>/S")
    scale: str = opt("small", "small (generated task, tiny models), real (pretrained encoders on real text, CPU) or full (the paper's data)")
    data: Dict[str, str] = opt({}, "what the full-scale version expects, name -> description")  # noqa: UP006
    gpu_hours: Optional[float] = opt(None, "estimated GPU hours of the full-scale run")
    vars: Dict[str, Any] = opt({}, "values the stages refer to as ${vars.name}")  # noqa: UP006
    include: List[str] = opt(  # noqa: UP006
        [], "method files whose stages come first (stages shared by several methods); relative to this file"
    )
    stages: Dict[str, StageConfig] = opt({}, "the stages, in order")  # noqa: UP006
    report: bool = opt(True, "write report.md and quality_vs_speed.png into the run folder at the end")
    report_set: Dict[str, Any] = opt({}, "ReportConfig settings of that report, e.g. {speed: {repeats: 3}}")  # noqa: UP006
    results: Dict[str, str] = opt(  # noqa: UP006
        {}, "label -> '@stage' of an evaluate (or speed) stage: collected into results-<name>.json at the end"
    )

    def validate(self) -> None:
        if not self.stages and not self.include:
            raise ConfigError(f"method '{self.name}' has no stages")
        for name in self.stages:
            if not STAGE_NAME.match(name):
                raise ConfigError(
                    f"stage name '{name}' must be lower-case letters, digits and _ "
                    "(it becomes a folder name under the run output)"
                )
        if self.include:
            return  # results may name included stages: checked once they are merged (load_method)
        for label, ref in self.results.items():
            m = REF.match(ref or "")
            if not m or m.group(2) or m.group(1) not in self.stages:
                raise ConfigError(f"results.{label}={ref}: expected '@stage' naming one of the method's stages")
            if self.stages[m.group(1)].step not in RESULT_STEPS:
                raise ConfigError(
                    f"results.{label}={ref}: stage '{m.group(1)}' runs {self.stages[m.group(1)].step}; "
                    f"results come from {' or '.join(RESULT_STEPS)} stages"
                )


def load_method(method_file: str | Path, overrides: list[str] | None = None, _seen: tuple = ()) -> MethodConfig:
    """Load a method file with its included files' stages first (in include order).

    Included stages keep their settings; their `config:` paths are relative to their own file; the
    including file's output folder and results apply, and its vars override the included files'
    vars of the same name; the included files' other vars are its defaults (two includes giving
    one var different values: an error, the including file must choose). A file reached through
    two includes gives its stages once; a stage name defined twice otherwise (or by one file with
    other vars) is an error."""
    method_file = Path(method_file)
    overrides = list(overrides or [])
    var_overrides = [ov for ov in overrides if ov.lstrip("~").startswith("vars.")]
    given = {ov.lstrip("~").split("=", 1)[0][5:].split(".", 1)[0] for ov in var_overrides}
    if given and not _seen:  # the command line's vars: a name no file of the method declares is a typo
        declared = _declared_vars(method_file, (), var_overrides)
        for name in sorted(given - declared):
            raise ConfigError(f"{method_file}: vars.{name}: " + unknown_name("var", name, sorted(declared)))
    # Include paths may name vars (`include: ["${vars.data}"]`): they resolve with the overriding
    # vars (an including file's or the command line's), so a documents variant can swap the data file.
    own_include, own_vars, own_stages = _head(method_file, var_overrides)
    if not own_include:
        return load_config(MethodConfig, method_file, overrides)
    includes = [Path(inc) if Path(inc).is_absolute() else method_file.parent / inc for inc in own_include]
    for path in includes:
        if path.resolve() in _seen or path.resolve() == method_file.resolve():
            raise ConfigError(f"{method_file}: include {path.name} includes itself (a cycle)")
    seen = (*_seen, method_file.resolve())
    # The including file's vars (and the command line's) override the included files' vars of the
    # same name (a documents variant: other data paths and lengths), in each include that declares
    # the var itself or through its own includes (real_groups.yaml passes on real_common.yaml's).
    shared = []
    for path in includes:
        names = _declared_vars(path, seen)
        shared.append([f"vars.{k}={format_value(v)}" for k, v in own_vars.items() if k in names])
    # Each include as it is used (with those vars): the stages it defines.
    included = [load_method(p, sv, seen) for p, sv in zip(includes, shared)]
    # An override of a stage an included file defines (`stages.warmup.set.optim.lr=...` on the
    # command line of a method that includes small_common.yaml) goes to that file's stage.
    routed: dict[int, list[str]] = {}
    kept: list[str] = []
    for ov in overrides:
        m = _STAGE_KEY.match(ov)
        target = None
        if m and m.group(1) not in own_stages:
            target = next((i for i, sub in enumerate(included) if m.group(1) in sub.stages), None)
        if target is None:
            kept.append(ov)
        else:
            routed.setdefault(target, []).append(ov)
    # The included files' vars the including file does not declare are its defaults.
    inherited: dict[str, tuple[Any, Path]] = {}
    for path, sub in zip(includes, included):
        for k, v in sub.vars.items():
            if k in own_vars:
                continue
            if k in inherited and inherited[k][0] != v:
                raise ConfigError(
                    f"{method_file}: vars.{k} is {format_value(inherited[k][0])} in {inherited[k][1].name} "
                    f"and {format_value(v)} in {path.name}; declare it in {method_file.name}"
                )
            inherited.setdefault(k, (v, path))
    defaults = [f"vars.{k}={format_value(v)}" for k, (v, _) in inherited.items()]
    method: MethodConfig = load_config(MethodConfig, method_file, defaults + kept)
    stages: dict[str, StageConfig] = {}
    where: dict[str, Path] = {}
    for i, path in enumerate(includes):
        sub = load_method(path, shared[i] + routed[i], seen) if i in routed else included[i]
        for name, stage in sub.stages.items():
            if stage.config and not Path(stage.config).is_absolute() and not REF.match(stage.config):
                # Absolute, so a file included through another include is not re-prefixed.
                stage.config = str(path.parent.resolve() / stage.config)
            if name in stages and stage != stages[name]:  # equal: one file reached through two includes
                raise ConfigError(f"{path}: stage '{name}' is also defined in {where[name]}")
            stages[name], where[name] = stage, path
    for name, stage in method.stages.items():
        if name in stages:
            raise ConfigError(f"{method_file}: stage '{name}' is also defined in the included {where[name]}")
        stages[name] = stage
    method.stages, method.include = stages, []
    method.validate()
    return method


def _head(method_file: Path, var_overrides: list[str]) -> tuple[list[str], dict[str, Any], set[str]]:
    """A method file's includes, vars and stage names, read before its stages resolve (they may
    use vars only an included file declares)."""
    try:
        content = method_file.read_bytes()
    except OSError:  # load_config names the missing or unreadable file
        return _read_head.__wrapped__(method_file, b"", tuple(var_overrides))
    include, variables, stages = _read_head(method_file, content, tuple(var_overrides))
    return list(include), copy.deepcopy(variables), set(stages)


@functools.lru_cache(maxsize=256)
def _read_head(method_file: Path, content: bytes, var_overrides: tuple[str, ...]):
    """`_head`, once per file content and vars (a method's includes are read again for each file
    that includes them and for each check of the command line's vars)."""
    merged = load_config(MethodConfig, method_file, list(var_overrides), allow_missing=True)
    try:
        include = OmegaConf.to_container(merged.include, resolve=True)
        variables = OmegaConf.to_container(merged.vars, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{method_file}: {e}") from None
    return list(include), dict(variables), set(merged.stages)


def _declared_vars(method_file: Path, seen: tuple = (), var_overrides: list[str] | None = None) -> set[str]:
    """The vars a method file and the files it includes declare (`var_overrides` choose the includes)."""
    names = set(_head(method_file, [])[1])
    for inc in _head(method_file, var_overrides or [])[0]:
        path = Path(inc) if Path(inc).is_absolute() else method_file.parent / inc
        if path.resolve() not in seen and path.resolve() != method_file.resolve():
            names |= _declared_vars(path, (*seen, method_file.resolve()))
    return names


def format_value(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    if v is None:
        return "null"
    return str(v)
