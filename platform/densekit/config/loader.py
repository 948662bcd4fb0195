"""Loading a step config: dataclass defaults < YAML file < dotted `key=value` overrides, checked
(unknown keys with a did-you-mean, types, required values), then every `validate()`; `opt` (a field
with its help line) and `describe_fields` (what `densekit <step> --help` prints)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import io
import os
import re
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf, open_dict
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from densekit.errors import ConfigError


def opt(default: Any = MISSING, help: str = "") -> Any:
    """A dataclass field with a default (copied per instance when mutable) and a one-line help."""
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata={"help": help})
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def unknown_name(what: str, value: str, choices: typing.Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{value}'; expected one of: {', '.join(choices)}.{hint}"


def _field_names(cls: type, dotted: str) -> list[str]:
    """Field names valid at the dotted prefix `dotted` of dataclass `cls` (for did-you-mean)."""
    t: Any = cls
    for part in [p for p in dotted.split(".") if p]:
        if typing.get_origin(t) in (dict, typing.Dict):  # noqa: UP006
            t = typing.get_args(t)[1]  # `part` is a mapping key: step into the value type
        elif isinstance(t, type) and dataclasses.is_dataclass(t):
            t = typing.get_type_hints(t).get(part)
        else:
            return []
        t = _strip_optional(t)
    return [f.name for f in dataclasses.fields(t)] if dataclasses.is_dataclass(t) else []


def _strip_optional(t: Any) -> Any:
    if typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def _unwrap(t: Any) -> Any:
    """Optional[X] -> X; Dict[str, X] -> X (so dotted paths walk into mapping values)."""
    origin = typing.get_origin(t)
    if origin is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else t
    if origin in (dict, typing.Dict):  # noqa: UP006
        return _unwrap(typing.get_args(t)[1])
    return t


# Names users bring from Hugging Face's Trainer and sentence-transformers' fit, and densekit's own.
FOREIGN_NAMES = {
    "learning_rate": "optim.lr",
    "lr_scheduler_type": "optim (linear warm-up and decay, the only schedule)",
    "per_device_train_batch_size": "optim.batch_size (queries per step over ALL workers)",
    "train_batch_size": "optim.batch_size",
    "gradient_accumulation_steps": "optim.grad_accum",
    "num_train_epochs": "optim.max_steps (training counts optimizer steps, not epochs)",
    "epochs": "optim.max_steps (training counts optimizer steps, not epochs)",
    "warmup_ratio": "optim.warmup_steps (a number of steps)",
    "warmup_steps": "optim.warmup_steps",
    "weight_decay": "optim.weight_decay",
    "adam_epsilon": "optim.eps",
    "max_grad_norm": "optim.max_grad_norm",
    "seed": "optim.seed",
    "fp16": "optim.amp=fp16",
    "bf16": "optim.amp=bf16",
    "output_dir": "output",
    "model_name_or_path": "model.path",
    "max_seq_length": "model.max_passage_length / model.max_query_length",
    "eval_steps": "eval.every",
    "evaluation_steps": "eval.every",
    "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints",
    "logging_steps": "progress_every_s (seconds between progress lines)",
    "num_workers": "resources.num_workers",
    "use_gpu": "resources.use_gpu",
}


def _foreign_hint(leaf: str, names: list[str], parent: str) -> str:
    """A pointer to densekit's key for a Hugging Face / sentence-transformers name, if one applies."""
    target = FOREIGN_NAMES.get(leaf)
    if target is None:
        return ""
    head = target.split(" ", 1)[0].split(".", 1)[0].split("=", 1)[0]
    if names and head not in names:
        return ""  # that key lives in another step's config
    return f" ('{leaf}' is a Hugging Face / sentence-transformers name: densekit's is {target}.)"


def _explain(e: OmegaConfBaseException, cls: type) -> str:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or ""
    msg = getattr(e, "msg", None) or str(e).splitlines()[0]
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and "not in" in msg:
        parent, _, leaf = str(key).rpartition(".")
        # Mapping-valued groups (losses.<name>.params) list their own keys.
        names = _field_names(cls, parent)
        close = difflib.get_close_matches(leaf, names, n=1)
        hint = _foreign_hint(leaf, _field_names(cls, ""), parent) or (
            f" Did you mean '{close[0]}'?" if close else ""
        )
        where = f"in '{parent}'" if parent else f"in {cls.__name__}"
        return f"unknown config key '{key}' {where}.{hint} Valid keys: {', '.join(names)}"
    if isinstance(e, MissingMandatoryValue):
        return f"missing required value '{key}' (set it in the YAML or as {key}=...)"
    if isinstance(e, (ValidationError, ConfigTypeError)):
        first = msg.splitlines()[0]
        return f"invalid value for '{key}': {first}"
    return f"{key}: {msg}" if key else msg


def missing_keys(obj: Any, prefix: str = "") -> list[str]:
    out = []
    keys = range(len(obj)) if OmegaConf.is_list(obj) else list(obj.keys())
    for k in keys:
        node = obj._get_node(k)
        name = f"{prefix}{k}"
        if OmegaConf.is_missing(obj, k):
            out.append(name)
        elif OmegaConf.is_config(node):
            out += missing_keys(node, name + ".")
    return out


def load_config(
    cls: type,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    allow_missing: bool = False,
) -> Any:
    """Load a step config: dataclass defaults < YAML file < dotted `key=value` overrides.

    Fails with a ConfigError, before any work starts, on an unknown key (with a did-you-mean
    suggestion), a value of the wrong type, a missing required value, or an unreadable file.

    Returns:
        An instance of `cls` (plain dataclasses all the way down). With `allow_missing` (config
        checks, `--dry-run`), required values may stay unset and the merged, type-checked
        OmegaConf object is returned instead.
    """
    layers = [_schema(cls)]  # merge copies its first layer: the cached schema stays as built
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = _parsed(os.path.abspath(p), p.read_bytes())
        except Exception as e:  # yaml.YAMLError and friends, with line and column
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not OmegaConf.is_dict(loaded):
            raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
        layers.append(loaded)
    removals = [item[1:].split("=", 1)[0] for item in overrides or [] if item.startswith("~")]
    overrides = [item for item in overrides or [] if not item.startswith("~")]
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (or ~key to remove an entry)")
    if removals:
        try:
            layers = [OmegaConf.merge(*layers)]
        except OmegaConfBaseException as e:
            raise ConfigError((f"{path}: " if path else "") + _explain(e, cls)) from None
        for key in removals:
            _remove(layers[0], key)
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override: {e}") from e
    try:
        merged = OmegaConf.merge(*layers)
        if allow_missing:
            return merged
        missing = missing_keys(merged)
        if missing:
            raise ConfigError(
                "missing required value(s): "
                + ", ".join(missing)
                + (f" (in {path})" if path else "")
                + "; set them in the YAML or as key=value"
            )
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        from_override = any(o.split("=", 1)[0] == key for o in overrides or [])
        where = "override: " if from_override else (f"{path}: " if path else "")
        raise ConfigError(where + _explain(e, cls)) from None
    validate_tree(obj)
    return obj


@functools.cache
def _schema(cls: type) -> Any:
    """A dataclass's OmegaConf schema, built once per process (a method's plan checks every stage's
    config against its step's schema; building one from the dataclass is most of a check)."""
    return OmegaConf.structured(cls)


@functools.lru_cache(maxsize=256)
def _parsed(path: str, content: bytes) -> Any:
    """A YAML file parsed once per content: keyed on the bytes read, so an edited file is parsed
    again (a method's includes are read by every file that includes them). Callers never change the
    result: load_config only merges it into a copy."""
    stream = io.StringIO(content.decode("utf-8"))
    stream.name = path  # YAML's error marks name the file, as when it reads the file itself
    return OmegaConf.load(stream)


def _remove(cfg: Any, key: str) -> None:
    """`~key`: drop an entry of a mapping (a loss of `losses`, a setting of a method stage's `set`).
    A dataclass field cannot be removed: it always has a value (set it instead)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not OmegaConf.is_dict(parent) or leaf not in parent:
        raise ConfigError(f"override '~{key}': there is no '{key}' to remove")
    if dataclasses.is_dataclass(OmegaConf.get_type(parent)):
        raise ConfigError(f"override '~{key}': '{leaf}' is a setting of {OmegaConf.get_type(parent).__name__}, "
                          f"it cannot be removed (set it: {key}=...)")
    with open_dict(parent):
        del parent[leaf]


def validate_tree(obj: Any) -> None:
    """Call `validate()` on every dataclass in the tree, children first."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            validate_tree(getattr(obj, f.name))
        if hasattr(obj, "validate"):
            obj.validate()
    elif isinstance(obj, dict):
        for v in obj.values():
            validate_tree(v)
    elif isinstance(obj, list):
        for v in obj:
            validate_tree(v)


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, help) of every field, recursing into nested dataclasses."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = _unwrap(hints[f.name])
        name = prefix + f.name
        if isinstance(t, type) and dataclasses.is_dataclass(t) and typing.get_origin(hints[f.name]) not in (
            dict,
            typing.Dict,  # noqa: UP006
        ):
            rows.append((name, t.__name__, "", f.metadata.get("help", "")))
            rows += describe_fields(t, name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = "(required)" if f.default == MISSING else repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def _type_name(t: Any) -> str:
    # Config classes are named by their public path, densekit.config.X (not densekit.config.<module>.X).
    s = re.sub(r"\bdensekit\.config\.\w+\.", "densekit.config.", str(t).replace("typing.", ""))
    return getattr(t, "__name__", s) if typing.get_origin(t) is None else s
