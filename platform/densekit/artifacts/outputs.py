"""Step outputs: the resolved config saved beside an output, the output guard (never clear a folder
densekit did not write, never write over an input) and `prepare_output`."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from densekit import __version__
from densekit.artifacts.files import write_json_atomic, write_text_atomic
from densekit.artifacts.manifest import is_complete
from densekit.artifacts.names import (
    CONFIG,
    LEGACY_CONFIG,
    LEGACY_MANIFEST,
    MANIFEST,
    MARKER,
    config_file,
    manifest_file,
)
from densekit.errors import ConfigError

logger = logging.getLogger(__name__)


def config_to_dict(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# Keys that do not change what a step computes: a rerun that differs only in these reuses the output
# (and a key of this kind added in a newer densekit does not turn older outputs into conflicts).
# `compile`, `compile_teacher` change speed only (compiled and eager outputs agree to ~1e-6).
NON_SEMANTIC_KEYS = frozenset({"overwrite", "resources", "output", "progress_every_s", "teacher_cache",
                               "share_teacher", "compile", "compile_teacher"})


def _semantic(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in NON_SEMANTIC_KEYS}


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def config_changes(directory: str | Path, cfg: Any) -> list[str]:
    """The dotted keys whose value differs between `cfg` and the config saved in `directory`,
    leaving out NON_SEMANTIC_KEYS (every key when no config was saved there)."""
    from omegaconf import OmegaConf

    saved = config_file(directory)
    old = OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file() else {}
    return _diff_keys(_semantic(old), _semantic(config_to_dict(cfg)))  # type: ignore[arg-type]


def step_name(cfg: Any) -> str:
    """The step a config belongs to, as its marker records it: EncodeConfig -> "encode"."""
    name = type(cfg).__name__
    return (name[: -len("Config")] if name.endswith("Config") else name).lower()


# Config keys whose value is a path the step WRITES (the rest, when they name an existing file or
# folder, are inputs). methods.plan keeps every one of them inside the run folder.
WRITE_KEYS = frozenset({"lookup_cache", "margin_mse_tsv", "teacher_cache"})


def is_write_key(key: str) -> bool:
    """Whether the dotted config key `key` names a path the step writes (output*, caches)."""
    last = key.split(".")[-1]
    return last.startswith("output") or last in WRITE_KEYS


def _config_items(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _config_items(v, f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _config_items(v, f"{prefix.rstrip('.')}[{i}].")
    else:
        yield prefix.rstrip("."), obj


def input_paths(cfg: Any) -> list[tuple[str, Path]]:
    """(key, path) of every setting of `cfg` that names an existing file or folder and is not
    written by the step (models, tables, indexes, ...), resolved."""
    if isinstance(cfg, Mapping):
        tree = dict(cfg)
    else:
        try:
            tree = config_to_dict(cfg)
        except Exception:  # not a structured config (a plain object in a test)
            tree = dict(vars(cfg))
    out = []
    for key, value in _config_items(tree):
        if key.startswith("resources.") or is_write_key(key.split("[")[0]):
            continue
        if isinstance(value, str) and value and value not in (".", "..") and len(value) < 4096:
            try:
                p = Path(value).expanduser()
                if p.exists():
                    out.append((key, p.resolve()))
            except (OSError, ValueError):
                continue
    return out


def _nested(a: Path, b: Path) -> bool:
    """Whether `a` is `b` or inside it."""
    return a == b or b in a.parents


def check_output_paths(cfg: Any, outputs: Mapping[str, Any] | None = None) -> None:
    """Refuse, before any work, an output that is, contains or lies inside one of the step's inputs
    (writing it would destroy the input), naming both settings.

    Args:
        cfg: the step's config; its `output` and other written paths (WRITE_KEYS) are checked.
        outputs: more written paths ({key: path}), e.g. the directory a step was given.
    """
    tree = config_to_dict(cfg) if not isinstance(cfg, Mapping) else dict(cfg)
    outputs = {**{k: v for k, v in _config_items(tree)
                  if is_write_key(k) and not k.startswith("resources.") and isinstance(v, str) and v},
               **(outputs or {})}
    inputs = input_paths(cfg)
    for okey, ovalue in outputs.items():
        if not ovalue:
            continue
        out = Path(ovalue).expanduser().resolve()
        for ikey, inp in inputs:
            if _nested(out, inp) or _nested(inp, out):
                how = "is" if out == inp else ("is inside" if _nested(out, inp) else "contains")
                raise ConfigError(
                    f"{okey}={ovalue} {how} the input {ikey}={inp}: writing it would destroy the "
                    f"input. Choose an output folder outside every input (and no input inside it)"
                )


def output_owner(directory: str | Path) -> str | None:
    """The densekit step that wrote `directory` (its marker or its manifest says so), else None."""
    directory = Path(directory)
    for name in (MARKER, MANIFEST, LEGACY_MANIFEST):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("step"), str) and "densekit_version" in data:
            return data["step"]
    return None


def write_marker(directory: str | Path, step: str) -> None:
    """Mark `directory` as an output of densekit `step` (see MARKER)."""
    write_json_atomic(Path(directory) / MARKER, {"step": step, "densekit_version": __version__})


def _claim_output(directory: Path, cfg: Any, overwrite: bool) -> None:
    """Refuse an existing `directory` that densekit did not write (or that another step wrote,
    unless `overwrite`): a file, or a non-empty folder without densekit's marker or manifest."""
    if directory.is_symlink() and not directory.exists():
        raise ConfigError(f"output={directory} is a broken symbolic link; choose another output")
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(
            f"output={directory} is an existing file, not a folder densekit wrote; densekit never "
            "replaces it: choose another output (or move the file away yourself)"
        )
    owner = output_owner(directory)
    step = step_name(cfg)
    if owner is None:
        if not any(directory.iterdir()):
            return  # an empty folder: nothing to lose
        # A partial output of an older densekit (no marker yet): its saved config is this very one.
        if config_file(directory).is_file() and not manifest_file(directory).exists():
            with contextlib.suppress(Exception):
                if not config_changes(directory, cfg):
                    return
        raise ConfigError(
            f"output={directory} is a non-empty folder that densekit did not write (no {MANIFEST} "
            f"or {MARKER} in it); densekit never clears it. Choose a new or empty output folder "
            "(or move its files away yourself)"
        )
    if (directory / MARKER).is_file() and owner != step and not overwrite:
        raise ConfigError(
            f"output={directory} holds output of the densekit step '{owner}', not '{step}'; choose "
            "another output, or pass overwrite=true to replace it"
        )


def prepare_output(
    directory: str | Path,
    cfg: Any,
    overwrite: bool = False,
    keep_partial: bool = False,
) -> bool:
    """Decide what a step does with its output directory; write its resolved config there.

    Returns False when the directory is already complete for the same config (the step has nothing
    to do), True when the step must (re)compute. A complete output made by a different config is an
    error unless `overwrite`. An incomplete one is wiped, unless `keep_partial` (steps that resume
    part-way, like encode, keep their finished shards).

    Only a folder densekit wrote (its MARKER or manifest) is ever cleared: an existing file, a
    non-empty folder of the user's, and an output that is, holds or lies inside an input of `cfg`
    are refused with a ConfigError before anything is written.
    """
    directory = Path(directory)
    check_output_paths(cfg, {"output": str(directory)})
    _claim_output(directory, cfg, overwrite)
    if is_complete(directory) and not overwrite:
        changed = config_changes(directory, cfg)
        if not changed:
            logger.info("%s is complete for this config: nothing to do", directory)
            return False
        raise ConfigError(
            f"{directory} already holds a complete output made with a different config "
            f"(differs in: {', '.join(changed[:8])}); pass overwrite=true or choose another output"
        )
    if directory.exists():
        if overwrite or not keep_partial:
            logger.info("clearing %s (%s)", directory, "overwrite" if overwrite else "incomplete")
            shutil.rmtree(directory)
        else:
            (directory / MANIFEST).unlink(missing_ok=True)
            (directory / LEGACY_MANIFEST).unlink(missing_ok=True)
            changed = config_changes(directory, cfg) if config_file(directory).exists() else []
            if changed:
                logger.info(
                    "%s holds partial output of another config (differs in: %s): clearing it",
                    directory,
                    ", ".join(changed[:8]),
                )
                shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_marker(directory, step_name(cfg))
    write_text_atomic(directory / CONFIG, config_to_yaml(cfg))
    (directory / LEGACY_CONFIG).unlink(missing_ok=True)  # an older densekit's name for it
    return True
