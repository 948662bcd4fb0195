"""The fixed names of a densekit output directory (see densekit.artifacts).

densekit's own files in an output start with `_` or `.`, so that pandas, pyarrow.dataset and Ray
Data read a table directory as it is: they skip such names and see only the Parquet parts.
Outputs of earlier densekit versions named them `manifest.json` and `config.yaml`: those are still
read (LEGACY_MANIFEST, LEGACY_CONFIG), never written.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "_manifest.json"
CONFIG = "_config.yaml"
LEGACY_MANIFEST = "manifest.json"
LEGACY_CONFIG = "config.yaml"
# Written by prepare_output when a step first takes an output folder: densekit only ever clears or
# replaces a folder that holds this marker or a densekit manifest (it never deletes a user's files).
MARKER = ".densekit-output"
PART = "part-{:05d}.parquet"
# What `densekit report` writes into the folder it reports on: derived files, rewritten by every
# report (also while a search runs), so an output's manifest never lists them.
REPORT_FILES = ("report.md", "report.json", "quality_vs_speed.png", "tune_curves.png", "tune_space.png")


def manifest_file(directory: str | Path) -> Path:
    """The manifest of `directory`: MANIFEST, else an older densekit's LEGACY_MANIFEST when only
    that exists (the path of MANIFEST when neither does)."""
    return _current_or_legacy(Path(directory), MANIFEST, LEGACY_MANIFEST)


def config_file(directory: str | Path) -> Path:
    """The resolved config saved in `directory`: CONFIG, else an older densekit's LEGACY_CONFIG
    when only that exists (the path of CONFIG when neither does)."""
    return _current_or_legacy(Path(directory), CONFIG, LEGACY_CONFIG)


def _current_or_legacy(directory: Path, name: str, legacy: str) -> Path:
    path = directory / name
    if not path.is_file() and (directory / legacy).is_file():
        return directory / legacy
    return path
