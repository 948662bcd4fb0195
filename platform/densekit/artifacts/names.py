"""The fixed names of a densekit output directory (see densekit.artifacts)."""

from __future__ import annotations

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
# Written by prepare_output when a step first takes an output folder: densekit only ever clears or
# replaces a folder that holds this marker or a densekit manifest (it never deletes a user's files).
MARKER = ".densekit-output"
PART = "part-{:05d}.parquet"
