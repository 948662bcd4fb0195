"""Manifests: `write_manifest` lists every file of a finished output (size, sha256, Parquet rows);
`read_manifest` checks them on read."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from densekit import __version__
from densekit.artifacts.files import write_json_atomic
from densekit.artifacts.names import LEGACY_MANIFEST, MANIFEST, MARKER, REPORT_FILES, manifest_file
from densekit.errors import ChangedArtifactError, IncompleteOutputError


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _listed_files(directory: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Every regular file below `directory` except temporaries, the top manifest (either name), the
    marker, a report's files at the top (`densekit report` rewrites them whenever it runs) and
    `exclude`d relative path prefixes."""
    files = []
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or ".tmp-" in p.name:
            continue
        if p in (directory / MANIFEST, directory / LEGACY_MANIFEST, directory / MARKER):
            continue
        if p.parent == directory and p.name in REPORT_FILES:
            continue
        if exclude and p.relative_to(directory).as_posix().startswith(exclude):
            continue
        files.append(p)
    return files


def write_manifest(
    directory: str | Path,
    step: str,
    extra: Mapping[str, Any] | None = None,
    checksums: bool = True,
    exclude: tuple[str, ...] = (),
) -> dict:
    """Write `directory/_manifest.json` last: every file's size, sha256 and (Parquet) row count.

    An older densekit's `manifest.json` in `directory` is removed once the new manifest is in place.

    Args:
        directory: the finished output directory.
        step: the step that wrote it (e.g. "import", "encode").
        extra: step-specific facts to record (counts of skipped rows, embedding dim, model path, ...).
        checksums: compute sha256 of every file (reads everything once more).
        exclude: relative path prefixes left out (working state such as training checkpoints,
            which another system manages and which may change after the step ends).

    Returns:
        The manifest as written.
    """
    directory = Path(directory)
    files = {}
    total_rows = 0
    for p in _listed_files(directory, tuple(exclude)):
        rel = p.relative_to(directory).as_posix()
        st = p.stat()
        entry: dict[str, Any] = {"bytes": st.st_size}
        if checksums:
            entry["sha256"] = sha256_file(p)
            if p.stat().st_mtime_ns == st.st_mtime_ns:  # unchanged while hashed: a reader here need not redo it
                _VERIFIED.add(_file_key(p, st))
        if p.suffix == ".parquet":
            entry["rows"] = pq.ParquetFile(p).metadata.num_rows
            if p.parent == directory:
                total_rows += entry["rows"]
        files[rel] = entry
    manifest = {
        "step": step,
        "densekit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": total_rows,
        "files": files,
        **(dict(extra) if extra else {}),
    }
    write_json_atomic(directory / MANIFEST, manifest)
    (directory / LEGACY_MANIFEST).unlink(missing_ok=True)
    return manifest


# Whether read_manifest checks every file's sha256 by default (sizes are always checked).
# DENSEKIT_VERIFY_CHECKSUMS=0 turns the hashes off (e.g. for a huge input already checked).
def _verify_default() -> bool:
    return os.environ.get("DENSEKIT_VERIFY_CHECKSUMS", "1").strip().lower() not in ("0", "false", "no", "off")


# Files whose sha256 this process already checked, by (path, size, mtime, inode, ctime): a method
# run or a step that opens its input twice hashes each file once.
_VERIFIED: set[tuple] = set()


def _file_key(p: Path, st: os.stat_result) -> tuple:
    return (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def read_manifest(directory: str | Path, deep: bool | None = None) -> dict:
    """Return the manifest of a complete output directory, or raise IncompleteOutputError.

    Checks that every listed file exists with its recorded size and, with `deep` (the default
    when a step opens an artifact to read it; DENSEKIT_VERIFY_CHECKSUMS=0 turns it off), its
    sha256; a file checked once in this process is not hashed again while unchanged on disk.
    Callers that only ask whether an output is complete (is_complete) or that re-open an artifact
    its step already verified pass deep=False.

    Raises:
        IncompleteOutputError: no manifest or a listed file missing. ChangedArtifactError (a
            subclass): a file's size or sha256 differs from the manifest's, naming the file.
    """
    directory = Path(directory)
    if deep is None:
        deep = _verify_default()
    path = manifest_file(directory)
    if not directory.exists():
        raise IncompleteOutputError(f"{directory}: does not exist")
    if not path.exists():
        raise IncompleteOutputError(
            f"{directory}: no {MANIFEST}; the step that writes it did not finish "
            "(rerun that step; it resumes or starts over)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise IncompleteOutputError(f"{path}: not a valid densekit manifest ({e})") from e
    step = manifest.get("step", "the step that wrote it") if isinstance(manifest, dict) else "its step"
    redo = (f"it changed since it was written. Restore it, or rerun '{step}' for {directory} with "
            "overwrite=true")
    for rel, entry in files.items():
        p = directory / rel
        if not p.is_file():
            raise IncompleteOutputError(f"{directory}: {rel} is listed in {path.name} but missing")
        st = p.stat()
        if st.st_size != entry.get("bytes"):
            raise ChangedArtifactError(
                f"{p} has {st.st_size} bytes, {path.name} says {entry.get('bytes')}: {redo}"
            )
        if deep and "sha256" in entry:
            key = _file_key(p, st)
            if key in _VERIFIED:
                continue
            if sha256_file(p) != entry["sha256"]:
                raise ChangedArtifactError(f"{p} does not match its sha256 in {path.name}: {redo}")
            _VERIFIED.add(key)
    return manifest


def is_complete(directory: str | Path) -> bool:
    try:
        read_manifest(directory, deep=False)
        return True
    except IncompleteOutputError:
        return False
