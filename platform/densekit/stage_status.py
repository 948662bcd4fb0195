"""What a method run knows of its stages' outputs: whether one is complete for this very config,
and the fingerprints of its inputs (a complete stage whose inputs changed since it ran is stale and
is redone). Used by densekit.methods' runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from densekit.artifacts import is_complete
from densekit.errors import ConfigError

if TYPE_CHECKING:
    from densekit.methods import PlannedStage


def input_fingerprints(inputs: dict[str, str]) -> dict[str, str]:
    """What each input of a stage is now, cheaply: the sha256 of a densekit output's manifest (it
    lists every file's size and sha256, so any change of content changes it), else the names,
    sizes and modification times of the files of a folder (a model, a data folder) or of a file.
    A missing path fingerprints as "missing"."""
    import hashlib

    out = {}
    for key, raw in sorted(inputs.items()):
        path = Path(raw)
        h = hashlib.sha256()
        if (path / "manifest.json").is_file():
            h.update(b"manifest\0" + (path / "manifest.json").read_bytes())
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    st = p.stat()
                    h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        elif path.is_file():
            st = path.stat()
            h.update(f"file\0{st.st_size}\0{st.st_mtime_ns}".encode())
        else:
            out[key] = "missing"
            continue
        out[key] = h.hexdigest()
    return out


def changed_inputs(recorded: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """Input keys whose fingerprint differs from the one recorded when the stage last ran (none
    when nothing was recorded: a run folder from before fingerprints were kept)."""
    if not recorded:
        return []
    return [k for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]


def previous_status(path: Path) -> dict[str, Any]:
    """The stages recorded by an earlier run of this method in the same folder (if any)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("stages", {})
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return {}


def stage_complete(stage: PlannedStage, cfg: Any) -> bool:
    """Whether a stage's output is complete for this very config.

    A directory output is complete with a valid manifest; a file output (export) as soon as it
    exists, since files are only ever renamed into place when fully written. A complete directory
    made by a different config (another method sharing the run folder, an edited method file) is
    an error, never silently reused.
    """
    if stage.output.is_file():
        return True
    if not is_complete(stage.output):
        return False
    from densekit.artifacts import CONFIG, config_changes

    if not (stage.output / CONFIG).is_file():
        return True
    changed = config_changes(stage.output, cfg)
    if changed:
        raise ConfigError(
            f"stage '{stage.name}': {stage.output} is complete but was made with another config "
            f"(differs in: {', '.join(changed[:8])}). Rerun it on purpose with --from {stage.name} "
            "(or --only), or give the method another output folder"
        )
    return True
