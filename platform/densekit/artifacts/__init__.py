"""Step outputs on disk: atomic writes, Parquet table directories, manifests and the resolved config.

Every step writes one output directory. A directory is *complete* only when its `_manifest.json`
(`manifest.json` from an earlier densekit) exists and lists files that are all present with their
recorded sizes: the manifest is written last, after every other file was renamed into place, so a
crash at any moment leaves either the previous complete output or something that no reader will
take for complete.

A *table* is a directory of `part-NNNNN.parquet` files plus its own manifest; Ray Data, pyarrow and
pandas all read such a directory directly (densekit's own files there start with `_` or `.`, which
they skip).

The code is split along its seams; every public name is importable from `densekit.artifacts`:
names (the fixed file names), files (atomic writes, `writing`), manifest (write/read/verify),
outputs (saved config, output guard, `prepare_output`) and tables (Parquet parts).
"""

from __future__ import annotations

from densekit.artifacts.files import (
    WRITE_ERRNOS,
    atomic_path,
    fsync_dir,
    is_write_failure,
    lock_path,
    output_lock,
    scratch_dir,
    tmp_name,
    write_json_atomic,
    write_text_atomic,
    writing,
)
from densekit.artifacts.manifest import is_complete, read_manifest, sha256_file, write_manifest
from densekit.artifacts.names import (
    CONFIG,
    LEGACY_CONFIG,
    LEGACY_MANIFEST,
    MANIFEST,
    MARKER,
    PART,
    config_file,
    manifest_file,
)
from densekit.artifacts.outputs import (
    NON_SEMANTIC_KEYS,
    WRITE_KEYS,
    check_output_paths,
    config_changes,
    config_to_dict,
    config_to_yaml,
    input_paths,
    is_write_key,
    output_owner,
    prepare_output,
    step_name,
    write_marker,
)
from densekit.artifacts.tables import (
    TableWriter,
    iter_table,
    open_part,
    read_table,
    table_parts,
    table_rows,
)

__all__ = [
    "CONFIG", "LEGACY_CONFIG", "LEGACY_MANIFEST", "MANIFEST", "MARKER", "NON_SEMANTIC_KEYS", "PART", "WRITE_ERRNOS", "WRITE_KEYS",
    "TableWriter", "atomic_path", "check_output_paths", "config_changes", "config_file", "config_to_dict",
    "config_to_yaml", "fsync_dir", "input_paths", "is_complete", "is_write_failure", "is_write_key", "lock_path", "output_lock",
    "iter_table", "manifest_file", "open_part", "output_owner", "prepare_output", "read_manifest", "read_table",
    "scratch_dir", "sha256_file", "step_name", "table_parts", "table_rows", "tmp_name",
    "write_json_atomic", "write_manifest", "write_marker", "write_text_atomic", "writing",
]
