"""What a method run knows of its stages' outputs: whether one is complete for this very config,
and the fingerprints of its inputs (a complete stage whose inputs changed since it ran is stale and
is redone). Used by densekit.methods' runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from densekit.artifacts import (
    CONFIG,
    LEGACY_CONFIG,
    LEGACY_MANIFEST,
    MANIFEST,
    is_complete,
    manifest_file,
)
from densekit.errors import ConfigError

if TYPE_CHECKING:
    from densekit.methods import PlannedStage


def input_fingerprints(inputs: dict[str, str]) -> dict[str, str]:
    """What each input of a stage is now, by content, so that a copied or re-cloned folder (new
    modification times, same bytes) or a stage redone with the same result is not taken for a
    change: a densekit output by its manifest's files (each one's path, size and sha256; nested
    manifests and the manifest's creation time left out), any other folder (a model, a data folder)
    or file by the sha256 of its files' contents (hashed once per process while a file is unchanged
    on disk). A missing path fingerprints as "missing"."""
    import hashlib

    out = {}
    for key, raw in sorted(inputs.items()):
        path = Path(raw)
        h = hashlib.sha256()
        manifest = manifest_file(path)  # or an older densekit's manifest.json
        listed = _manifest_files(manifest) if manifest.is_file() else None
        if listed is not None:
            h.update(b"manifest\0")
            for rel, entry in sorted(listed.items()):
                if Path(rel).name in (MANIFEST, LEGACY_MANIFEST):
                    continue  # a nested table's manifest: its files are listed here too
                if Path(rel).name == LEGACY_CONFIG:  # the same saved config under its older name
                    rel = rel[: -len(LEGACY_CONFIG)] + CONFIG
                h.update(f"{rel}\0{entry.get('bytes')}\0{entry.get('sha256', '')}\n".encode())
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    h.update(f"{p.relative_to(path).as_posix()}\0{_content_hash(p)}\n".encode())
        elif path.is_file():
            h.update(f"file\0{_content_hash(path)}".encode())
        else:
            out[key] = "missing"
            continue
        out[key] = FINGERPRINT_PREFIX + h.hexdigest()
    return out


# Fingerprints carry their scheme: ones recorded by an earlier scheme (sizes and modification
# times) are not compared, so an upgrade does not redo a whole run.
FINGERPRINT_PREFIX = "c1:"


def _manifest_files(path: Path) -> dict | None:
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


# sha256 of files this process already hashed, by (path, size, mtime, inode): a method run
# fingerprints the same model folder for several stages and hashes it once.
_HASHED: dict[tuple, str] = {}


def _content_hash(path: Path) -> str:
    from densekit.artifacts import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def changed_inputs(recorded: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """Input keys whose fingerprint differs from the one recorded when the stage last ran (none
    when nothing was recorded, or only fingerprints of an earlier scheme: a run folder from an
    earlier densekit)."""
    if not recorded or not all(v == "missing" or v.startswith(FINGERPRINT_PREFIX) for v in recorded.values()):
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
    from densekit.artifacts import config_changes, config_file

    if not config_file(stage.output).is_file():
        return True
    changed = config_changes(stage.output, cfg)
    if changed:
        raise ConfigError(
            f"stage '{stage.name}': {stage.output} is complete but was made with another config "
            f"(differs in: {', '.join(changed[:8])}). Rerun it on purpose with --from {stage.name} "
            "(or --only), or give the method another output folder"
        )
    return True
