"""Step outputs on disk: atomic writes, Parquet table directories, manifests and the resolved config.

Every step writes one output directory. A directory is *complete* only when its `manifest.json`
exists and lists files that are all present with their recorded sizes: the manifest is written last,
after every other file was renamed into place, so a crash at any moment leaves either the previous
complete output or something that no reader will take for complete.

A *table* is a directory of `part-NNNNN.parquet` files plus its own manifest; Ray Data, pyarrow and
pandas all read such a directory directly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from densekit import __version__
from densekit.errors import (
    ChangedArtifactError,
    ConfigError,
    DensekitError,
    IncompleteOutputError,
    InputError,
    WriteError,
    root_cause,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
# Written by prepare_output when a step first takes an output folder: densekit only ever clears or
# replaces a folder that holds this marker or a densekit manifest (it never deletes a user's files).
MARKER = ".densekit-output"
PART = "part-{:05d}.parquet"


# --- atomic files and directories ------------------------------------------------------------------


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns() % 10**9}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on error delete it.

    The caller writes a file (or a directory) at the yielded path. Readers never see a half-written
    `path`: rename is atomic on one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if path.is_dir() and tmp.is_dir():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = _tmp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


# errno values that mean "this write cannot succeed here" rather than "this input is bad".
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def is_write_failure(error: BaseException) -> bool:
    """An OSError of a failed write: disk full, quota, file too large, read-only file system.

    pyarrow and FAISS do not always set `errno`; their messages carry the system's text.
    """
    if not isinstance(error, OSError):
        return False
    if error.errno in WRITE_ERRNOS:
        return True
    text = str(error)
    return any(os.strerror(code) in text for code in WRITE_ERRNOS)


@contextlib.contextmanager
def writing(directory: str | Path, step: str, resume: str = "it starts over") -> Iterator[None]:
    """Run a step's work on `directory`; turn a failed write (even inside a Ray task or actor) into
    a WriteError that says what is left, and a DensekitError raised remotely into itself.

    Args:
        directory: the step's output directory.
        step: the step's name, for the message.
        resume: what a rerun does with the partial output (e.g. "finished shards are kept").
    """
    try:
        yield
    except Exception as e:
        cause = root_cause(e)
        if is_write_failure(cause):
            reason = os.strerror(cause.errno) if cause.errno in WRITE_ERRNOS else str(cause).strip()
            raise WriteError(
                f"{step}: writing {directory} failed ({reason}). It has no {MANIFEST}, so nothing "
                f"will read it as complete; free space (or fix the file system) and rerun the "
                f"same command: {resume}."
            ) from e
        if cause is not e and isinstance(cause, DensekitError):
            raise cause from None
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# --- manifests -------------------------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _listed_files(directory: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Every regular file below `directory` except temporaries, the top manifest and `exclude`d
    relative path prefixes."""
    files = []
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or ".tmp-" in p.name:
            continue
        if p in (directory / MANIFEST, directory / MARKER):
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
    """Write `directory/manifest.json` last: every file's size, sha256 and (Parquet) row count.

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
    path = directory / MANIFEST
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
            raise IncompleteOutputError(f"{directory}: {rel} is listed in {MANIFEST} but missing")
        st = p.stat()
        if st.st_size != entry.get("bytes"):
            raise ChangedArtifactError(
                f"{p} has {st.st_size} bytes, {MANIFEST} says {entry.get('bytes')}: {redo}"
            )
        if deep and "sha256" in entry:
            key = _file_key(p, st)
            if key in _VERIFIED:
                continue
            if sha256_file(p) != entry["sha256"]:
                raise ChangedArtifactError(f"{p} does not match its sha256 in {MANIFEST}: {redo}")
            _VERIFIED.add(key)
    return manifest


def is_complete(directory: str | Path) -> bool:
    try:
        read_manifest(directory, deep=False)
        return True
    except IncompleteOutputError:
        return False


# --- step outputs ----------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# Keys that do not change what a step computes: a rerun that differs only in these reuses the output
# (and a key of this kind added in a newer densekit does not turn older outputs into conflicts).
NON_SEMANTIC_KEYS = frozenset({"overwrite", "resources", "output", "progress_every_s"})


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

    saved = Path(directory) / CONFIG
    old = OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file() else {}
    return _diff_keys(_semantic(old), _semantic(config_to_dict(cfg)))  # type: ignore[arg-type]


def step_name(cfg: Any) -> str:
    """The step a config belongs to, as its marker records it: EncodeConfig -> "encode"."""
    name = type(cfg).__name__
    return (name[: -len("Config")] if name.endswith("Config") else name).lower()


# Config keys whose value is a path the step WRITES (the rest, when they name an existing file or
# folder, are inputs). methods.plan keeps every one of them inside the run folder.
WRITE_KEYS = frozenset({"lookup_cache", "margin_mse_tsv"})


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
    for name in (MARKER, MANIFEST):
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
        if (directory / CONFIG).is_file() and not (directory / MANIFEST).exists():
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
            changed = config_changes(directory, cfg) if (directory / CONFIG).exists() else []
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
    return True


# --- Parquet tables --------------------------------------------------------------------------------


class TableWriter:
    """Stream record batches into a table directory as Parquet parts of at most `rows_per_part` rows.

    Each part is written under a temporary name and renamed when full, so memory stays bounded by
    one row group and a crash never leaves a truncated part. Call `close()` (or use `with`), then
    `write_manifest` on the directory (or on its parent for multi-table outputs).
    """

    def __init__(
        self,
        directory: str | Path,
        schema: pa.Schema,
        rows_per_part: int = 1_000_000,
        row_group_size: int = 65_536,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.row_group_size = row_group_size
        self.rows = 0
        self.parts = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._part_rows = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0

    def write(self, batch: pa.RecordBatch | pa.Table | Mapping[str, list]) -> None:
        if isinstance(batch, Mapping):
            batch = pa.RecordBatch.from_pydict(dict(batch), schema=self.schema)
        elif isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.write(b)
            return
        if batch.num_rows == 0:
            return
        if batch.schema != self.schema:
            batch = pa.RecordBatch.from_arrays(
                [batch.column(name).cast(field.type) for name, field in zip(self.schema.names, self.schema)],
                schema=self.schema,
            )
        while batch.num_rows:
            room = self.rows_per_part - self._part_rows - self._buffered
            head, batch = batch.slice(0, room), batch.slice(room)
            self._buffer.append(head)
            self._buffered += head.num_rows
            if self._buffered >= self.row_group_size:
                self._flush()
            if self._part_rows + self._buffered >= self.rows_per_part:
                self._flush()
                self._finish_part()

    def _flush(self) -> None:
        if not self._buffered:
            return
        if self._writer is None:
            self._tmp = _tmp_name(self.directory / PART.format(self.parts))
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._writer.write_table(pa.Table.from_batches(self._buffer, schema=self.schema))
        self._part_rows += self._buffered
        self.rows += self._buffered
        self._buffer, self._buffered = [], 0

    def _finish_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        assert self._tmp is not None
        os.replace(self._tmp, self.directory / PART.format(self.parts))
        self.parts += 1
        self._writer, self._tmp, self._part_rows = None, None, 0

    def close(self) -> int:
        """Finish the last part; an empty table still gets one (empty) part so its schema is kept."""
        self._flush()
        if self._writer is None and self.parts == 0:
            self._tmp = _tmp_name(self.directory / PART.format(0))
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._finish_part()
        return self.rows

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            self._writer = None

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def table_parts(directory: str | Path) -> list[Path]:
    """The Parquet files of a table directory (or the file itself), in order."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such table (expected a directory of Parquet files)")
    parts = sorted(p for p in directory.glob("*.parquet") if ".tmp-" not in p.name)
    if not parts:
        raise IncompleteOutputError(f"{directory}: holds no Parquet files")
    return parts


def open_part(path: str | Path) -> pq.ParquetFile:
    """Open one Parquet file; a truncated or corrupt one raises InputError naming it."""
    return _open_part(Path(path))


def _open_part(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(path, None, f"not a readable Parquet file ({e})") from e


def iter_table(
    directory: str | Path,
    columns: list[str] | None = None,
    batch_size: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Stream a table directory batch by batch (bounded memory)."""
    for part in table_parts(directory):
        pf = _open_part(part)
        _check_columns(part, pf.schema_arrow, columns)
        try:
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(part, None, f"corrupt Parquet data ({e})") from e


def read_table(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a whole (small) table directory into memory: queries, qrels, runs, not corpora."""
    tables = []
    for part in table_parts(directory):
        pf = _open_part(part)
        _check_columns(part, pf.schema_arrow, columns)
        try:
            tables.append(pf.read(columns=columns))
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(part, None, f"corrupt Parquet data ({e})") from e
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def table_rows(directory: str | Path) -> int:
    return sum(_open_part(p).metadata.num_rows for p in table_parts(directory))


def _check_columns(path: Path, schema: pa.Schema, columns: list[str] | None) -> None:
    if columns:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise InputError(
                path, None, f"missing column(s) {missing}; has {schema.names}"
            )


def scratch_dir(prefix: str = "densekit-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
