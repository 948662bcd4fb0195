"""Connecting to Ray: the job's cluster under `ray job submit`, else a local Ray started on demand.

Every step that uses Ray calls `init_ray(cfg.resources)` first and nothing else Ray-global, so the
same command line runs on a laptop and as a submitted job.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def init_ray(resources: Any | None = None) -> None:
    """Attach to Ray if it is not already initialised (tests and drivers may have started it).

    Resolution order: an already-initialised Ray; `resources.address`; the RAY_ADDRESS environment
    variable (set inside `ray job submit` jobs); a cluster started here with `ray start`; otherwise
    a new local Ray on this machine.
    """
    import ray

    if ray.is_initialized():
        return
    address = getattr(resources, "address", None) or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        logger.info("connecting to Ray at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # Like `ray.init()`: attach to a cluster started on this machine with `ray start`, if
        # any, else start a local one. A stale record of a stopped cluster must not stop us.
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            logger.warning("no Ray cluster at the last `ray start` address (%s): starting a local Ray", e)
            ray.init(address="local", include_dashboard=False, **kwargs)
    res = ray.cluster_resources()
    logger.info(
        "Ray: %d node(s), %g CPU, %g GPU",
        len([n for n in ray.nodes() if n.get("Alive")]),
        res.get("CPU", 0),
        res.get("GPU", 0),
    )
