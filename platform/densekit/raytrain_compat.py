"""Ray Train's placement-group cleaner without Ray's State API.

Ray Train (v2) starts a detached PlacementGroupCleaner actor per run that asks, every second,
whether the run's controller is alive, through Ray's State API (`ray.util.state.get_actor`). That
API needs the dashboard's HTTP server, which densekit's private local Ray does not start, and it
finds the cluster by RAY_ADDRESS or else by scanning the machine's Ray processes. In a densekit run
the cleaner's monitor thread therefore died at its first check, with a traceback printed into the
run's output ("Found multiple active Ray instances" when another Ray ran on the machine; "Couldn't
obtain the API server address" otherwise), and stopped cleaning up.

`patch_placement_group_cleaner()` (called by `densekit.raycluster.init_ray` in a Train driver)
makes the trainer start a cleaner that asks the GCS directly (`ray._private.state.actors`), which
needs neither. Everything here is guarded: with another Ray layout nothing is patched and Ray Train
behaves as it does by itself.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

try:
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )
    from ray.train.v2._internal.execution.controller import (
        placement_group_cleaner as _cleaner_module,
    )
    from ray.train.v2._internal.execution.controller.placement_group_cleaner import (
        PlacementGroupCleaner,
    )
except ImportError:  # pragma: no cover - another Ray layout
    PlacementGroupCleanerCallback = PlacementGroupCleaner = _cleaner_module = None  # type: ignore[assignment,misc]


def actor_alive_in_gcs(actor_id: str, timeout: float | None = None) -> bool:
    """Whether the actor is alive, from the GCS's actor table (no dashboard, no address lookup).
    Unknown actors count as alive (the cleaner then keeps waiting, as with a State API error)."""
    import ray

    try:
        info = ray._private.state.actors(actor_id=actor_id)
    except Exception:  # noqa: BLE001 - the GCS briefly unreachable: check again next interval
        return True
    return not info or info.get("State") != "DEAD"


if PlacementGroupCleaner is not None:

    class GcsPlacementGroupCleaner(PlacementGroupCleaner):  # type: ignore[misc,valid-type]
        """Ray Train's cleaner, with the controller's liveness read from the GCS. Runs in an
        actor process of its own, so replacing the module's `is_actor_alive` there is local."""

        def __init__(self, *args, **kwargs):
            _cleaner_module.is_actor_alive = actor_alive_in_gcs
            super().__init__(*args, **kwargs)

    class GcsPlacementGroupCleanerCallback(PlacementGroupCleanerCallback):  # type: ignore[misc,valid-type]
        """Launches GcsPlacementGroupCleaner instead of Ray's cleaner (in the controller)."""

        def after_controller_start(self, train_run_context):
            from ray.train.v2._internal.callbacks import placement_group_callback as module

            original = module.PlacementGroupCleaner
            module.PlacementGroupCleaner = GcsPlacementGroupCleaner
            try:
                return super().after_controller_start(train_run_context)
            finally:
                module.PlacementGroupCleaner = original


def patch_placement_group_cleaner() -> bool:
    """Make Ray Train's trainers start GcsPlacementGroupCleaner. Returns whether it was patched."""
    if PlacementGroupCleaner is None:
        return False
    try:
        from ray.train.v2.api import data_parallel_trainer
    except ImportError:  # pragma: no cover
        return False
    if getattr(data_parallel_trainer, "PlacementGroupCleanerCallback", None) is None:
        return False
    data_parallel_trainer.PlacementGroupCleanerCallback = GcsPlacementGroupCleanerCallback
    return True
