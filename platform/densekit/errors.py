"""The exceptions densekit raises for problems a user can fix (bad config, bad input, bad state).

The CLI prints these as one clear message, without a traceback; anything else is a bug.
"""

from __future__ import annotations

from pathlib import Path


class DensekitError(Exception):
    """Base class: a problem with the user's input, config or files, not a bug in densekit."""


class ConfigError(DensekitError):
    """A config file or override is invalid: unknown key, wrong type, missing value, bad path."""


class InputError(DensekitError):
    """A data file is malformed. Names the file, the line (or record) and what was expected.

    Args:
        path: the file being read.
        line: 1-based line number (or record number for binary formats); None if not applicable.
        problem: what is wrong and what was expected, e.g. "expected 2 tab-separated columns, got 1".
    """

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Rebuilt from its three arguments: raised in a Ray task or actor, it must unpickle on the
        # driver (the default reduce passes the one formatted message and fails).
        return (type(self), (self.path, self.line, self.problem))


class IncompleteOutputError(DensekitError):
    """An input directory exists but was not finished (no or invalid manifest)."""


class ChangedArtifactError(IncompleteOutputError):
    """A file of a complete output no longer matches its manifest (size or sha256): it changed
    after the step wrote it (disk corruption, an edit, a partial copy)."""


class WriteError(DensekitError):
    """Writing an output failed part-way (disk full, quota, read-only file system). Nothing was
    marked complete: the output has no manifest, and a rerun resumes or starts over."""


class OutputBusyError(DensekitError):
    """Another densekit process is writing the same output directory (it holds the output's lock)."""


def root_cause(error: BaseException) -> BaseException:
    """The exception a Ray task, actor or Ray Data function raised, behind Ray's wrappers
    (`RayTaskError.cause`, Train's per-worker errors); `error` itself when it wraps nothing."""
    for _ in range(8):
        cause = getattr(error, "cause", None)
        if cause is None:
            failures = getattr(error, "worker_failures", None)  # ray.train WorkerGroupError
            if isinstance(failures, dict) and failures:
                cause = next(iter(failures.values()))
        if not isinstance(cause, BaseException) or cause is error:
            break
        error = cause
    return error
