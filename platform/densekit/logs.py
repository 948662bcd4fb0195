"""Logging set-up for the CLI, quiet third-party output, and a progress reporter for long loops.

By default densekit's own lines are the output: Ray's and Hugging Face's loggers, progress bars
and worker output are kept quiet (`quiet_third_party`), in this process and, through the Ray
worker set-up hook (densekit.raycluster), in every Ray worker. `densekit -v STEP ...` (or
DENSEKIT_VERBOSE=1) lets all of it through again.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time

from densekit import stopping

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
VERBOSE_ENV = "DENSEKIT_VERBOSE"
# A line densekit's own logging wrote (driver or worker): what a quiet run shows of worker output.
OWN_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) densekit[.:]")

# Set (when unset) in a quiet process before the libraries read them; Ray workers get the same.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}
# Loggers of other libraries held at WARNING in a quiet process (ERROR for the chattiest).
QUIET_LOGGERS = {
    "ray": logging.ERROR, "ray.train": logging.WARNING,
    "ray.tune": logging.WARNING, "transformers": logging.ERROR, "huggingface_hub": logging.ERROR,
    "sentence_transformers": logging.WARNING, "faiss": logging.WARNING, "faiss.loader": logging.WARNING,
    "torch": logging.WARNING, "filelock": logging.WARNING, "fsspec": logging.WARNING,
    "urllib3": logging.WARNING, "httpx": logging.WARNING,
}  # fmt: skip


def verbose() -> bool:
    """Whether third-party output is wanted (`densekit -v`, or DENSEKIT_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def setup_logging(level: str | int | None = None, verbose_: bool | None = None) -> None:
    """Configure the root logger once (CLI and job entry points). Level from DENSEKIT_LOG_LEVEL.

    `verbose_` (default: DENSEKIT_VERBOSE) also sets DENSEKIT_VERBOSE for the processes this one
    starts; unless verbose, third-party output is quietened (`quiet_third_party`).
    """
    level = level or os.environ.get("DENSEKIT_LOG_LEVEL", "INFO")
    if verbose_ is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose_ else "0"
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT, datefmt=DATEFMT)
    else:
        root.setLevel(level)
    if verbose():
        for name in ("urllib3", "filelock", "fsspec", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    else:
        quiet_third_party()


def quiet_third_party() -> None:
    """Keep Ray's, Hugging Face's and FAISS's messages and progress bars out of this process's
    output: environment defaults (for libraries not imported yet and for child processes), logger
    levels, and the settings of the libraries already imported. Warnings and errors of densekit
    are untouched. Idempotent; a variable the user set keeps its value."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name, lvl in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(lvl)
    if "transformers" in sys.modules:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except Exception:  # noqa: BLE001 - another transformers layout: its env defaults still apply
            pass
    if "huggingface_hub" in sys.modules:
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        except Exception:  # noqa: BLE001
            pass
    if "ray.data" in sys.modules:
        quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data: no progress bars or progress log blocks, and only its warnings on the console
    (its full log still goes to the session's ray-data.log)."""
    try:
        import ray.data
        from ray.util.debug import log_once

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
        log_once("ray_data_progress_manager_disabled")  # its "progress bars disabled" notice: said
        data_logger = logging.getLogger("ray.data")
        for handler in data_logger.handlers:
            if getattr(handler, "name", None) == "console":
                handler.setLevel(logging.WARNING)
    except Exception:  # noqa: BLE001 - another Ray layout: the env defaults still apply
        pass


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


def live_terminal() -> bool:
    """Whether progress may be drawn as a live bar: stderr is a terminal (and DENSEKIT_PROGRESS is
    not `log`). Otherwise (a log file, CI, `ray job submit`) progress is periodic log lines."""
    mode = os.environ.get("DENSEKIT_PROGRESS", "auto").strip().lower()
    if mode in ("log", "lines", "0", "off"):
        return False
    if mode in ("bar", "live", "1"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress of a long loop: a live bar on a terminal, else `what: done/total (rate/s, eta)`
    logged at most every `every` seconds; `done()` logs the final line either way.

    The bar (tqdm, on stderr) is drawn only when stderr is a terminal (`live_terminal`); in a log
    file, CI or a Ray job the periodic lines say the same without control characters.

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
        live: bool | None = None,
    ):
        self.logger, self.what, self.total, self.unit, self.every = logger, what, total, unit, every
        self.count = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        self._redirect = None
        if (live_terminal() if live is None else live) and logger.isEnabledFor(logging.INFO):
            try:
                from tqdm import tqdm
                from tqdm.contrib.logging import logging_redirect_tqdm

                self.bar = tqdm(total=total, desc=what, unit=f" {unit}", file=sys.stderr, leave=False,
                                dynamic_ncols=True, mininterval=0.5, disable=False)
                # Log lines written while the bar is drawn go above it, not through it.
                self._redirect = logging_redirect_tqdm()
                self._redirect.__enter__()
            except Exception:  # noqa: BLE001 - no tqdm, or no terminal after all: log lines
                self.bar = None

    def update(self, n: int = 1) -> None:
        stopping.check()  # a Ctrl-C lost where it landed stops the loop here
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            return
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

    def close(self) -> None:
        """Remove the bar (if any) without the final line: the loop failed."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def done(self) -> None:
        self.close()
        self.logger.info("%s: done, %s", self.what, self._status(time.monotonic()))


def write_line(line: str) -> None:
    """Write one line to stderr, above a live progress bar if one is drawn."""
    try:
        from tqdm import tqdm

        if getattr(tqdm, "_instances", None):
            tqdm.write(line, file=sys.stderr)
            return
    except ImportError:
        pass
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
