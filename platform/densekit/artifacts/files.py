"""Atomic files and directories, the lock a step holds on its output, and the turning of a failed
write into a WriteError."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from densekit.artifacts.names import MANIFEST
from densekit.errors import DensekitError, OutputBusyError, WriteError, root_cause


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns() % 10**9}")


def fsync_dir(path: Path) -> None:
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
    tmp = tmp_name(path)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if path.is_dir() and tmp.is_dir():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = tmp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
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



def scratch_dir(prefix: str = "densekit-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def lock_path(directory: str | Path) -> Path:
    """The lock file of an output directory: `.<name>.lock` beside it."""
    directory = Path(directory)
    return directory.with_name(f".{directory.name}.lock")


@contextlib.contextmanager
def output_lock(directory: str | Path | None, step: str) -> Iterator[None]:
    """Hold an exclusive lock on `directory` while a step writes it: a second densekit process
    that would write the same output (the same command started twice, two methods sharing a run
    folder) is refused at once instead of both writing into it. The lock is an flock on
    `.<name>.lock` beside the directory, released (and the file removed) when the step ends, also
    by a crash: the kernel drops the lock of a dead process.

    Raises:
        OutputBusyError: another process holds the lock (its pid and step are named).
    """
    if directory is None:
        yield
        return
    import fcntl

    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise OutputBusyError(
                f"{step}: {directory} is being written by {holder}; wait for it to finish (or stop "
                f"it) before writing the same output, or choose another output"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        import socket

        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({step})\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing drops the flock
