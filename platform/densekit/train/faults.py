"""Fault injection for the reliability tests, driven by DENSEKIT_FAULT_* environment variables."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def maybe_inject_fault(step: int, rank: int, where: str = "step") -> None:
    """Fault injection for the reliability tests, once per marker file DENSEKIT_FAULT_MARKER, at
    step DENSEKIT_FAULT_AT_STEP=N on rank DENSEKIT_FAULT_RANK (default 0). DENSEKIT_FAULT_KIND:
    "kill" (default) kills the worker process after step N (DENSEKIT_FAULT_DELAY_S later: Ray
    Train registers a reported checkpoint when it next polls the worker, every 2 s; a worker that
    dies sooner resumes from the checkpoint before); "checkpoint_write" fails step
    N's checkpoint half-written, with the OSError of a full disk. Besides, DENSEKIT_FAULT_HANG_AT_STEP=M
    stops rank 0 after step M until it is killed (once per <marker>.hang): a test kills the
    driver there, at a known point."""
    hang = os.environ.get("DENSEKIT_FAULT_HANG_AT_STEP")
    if hang and int(hang) == step and rank == 0 and where == "step":
        marker = Path(os.environ["DENSEKIT_FAULT_MARKER"] + ".hang")
        if not marker.exists():
            marker.write_text(f"hang: rank {rank}, step {step}\n")
            logger.warning("fault injection: worker stops after step %d until killed", step)
            while True:
                time.sleep(1)
    at = os.environ.get("DENSEKIT_FAULT_AT_STEP")
    if not at or int(at) != step or rank != int(os.environ.get("DENSEKIT_FAULT_RANK", "0")):
        return
    kind = os.environ.get("DENSEKIT_FAULT_KIND", "kill")
    if (kind == "kill") != (where == "step"):
        return
    marker = Path(os.environ["DENSEKIT_FAULT_MARKER"])
    if marker.exists():
        return
    marker.write_text(f"{kind}: rank {rank}, step {step}\n")
    if kind == "checkpoint_write":
        logger.warning("fault injection: failing the checkpoint of step %d half-written", step)
        raise OSError(errno.ENOSPC, "No space left on device (injected while writing a checkpoint)")
    time.sleep(float(os.environ.get("DENSEKIT_FAULT_DELAY_S", "0")))
    logger.warning("fault injection: killing this worker after step %d", step)
    os._exit(1)
