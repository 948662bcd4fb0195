"""Logging set-up for the CLI and a small progress reporter for long loops (logged, never printed)."""

from __future__ import annotations

import logging
import math
import os
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once (CLI and job entry points). Level from DENSEKIT_LOG_LEVEL."""
    level = level or os.environ.get("DENSEKIT_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")
    else:
        root.setLevel(level)
    # Third-party chatter that drowns the progress lines.
    for name in ("urllib3", "filelock", "fsspec", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def format_duration(seconds: float | None) -> str:
    """`45 s`, `12 min 03 s`, `3 h 07 min`; `?` when unknown (None, inf, nan)."""
    if seconds is None or not math.isfinite(seconds):
        return "? s"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Logs `what: done/total (rate/s, eta)` at most every `every` seconds.

    Example:
        progress = Progress(logger, "import corpus", total=None, unit="rows")
        for batch in batches:
            progress.update(len(batch))
        progress.done()
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        total: int | None = None,
        unit: str = "rows",
        every: float = 10.0,
    ):
        self.logger, self.what, self.total, self.unit, self.every = logger, what, total, unit, every
        self.count = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.logger.info("%s: %s", self.what, self._status(now))

    def _status(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        if self.total:
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            return (
                f"{self.count:,}/{self.total:,} {self.unit} "
                f"({100 * self.count / self.total:.1f}%, {rate:,.0f}/s, eta {format_duration(eta)})"
            )
        return f"{self.count:,} {self.unit} ({rate:,.0f}/s, {format_duration(elapsed)})"

    def done(self) -> None:
        self.logger.info("%s: done, %s", self.what, self._status(time.monotonic()))
