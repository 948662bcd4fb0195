"""Rank 0's progress lines between checkpoints."""

from __future__ import annotations

import time

from densekit.logs import format_duration


class StepProgress:
    """Rank 0's progress between checkpoints: a checkpoint logs its step line, and a long interval
    without one (a 500-step cross-encoder with checkpoint_every 0) would say nothing for minutes.
    `line()` returns a progress line at most every `every_s` seconds, else None.

    The loss is rank 0's own mean since the last checkpoint (no collective: a progress line must
    not make the workers wait for each other); the checkpoint line has the mean over every rank.
    """

    def __init__(self, every_s: float, max_steps: int, start_step: int = 0, clock=time.monotonic):
        self.every_s, self.max_steps, self.clock = every_s, max_steps, clock
        self.t_start, self.step_start = clock(), start_step
        self.t_last = self.t_start

    def restart(self) -> None:
        """A checkpoint line was just logged: the next progress line is due every_s from now."""
        self.t_last = self.clock()

    def line(self, step: int, local_loss: float) -> str | None:
        now = self.clock()
        if self.every_s <= 0 or now - self.t_last < self.every_s:
            return None
        self.t_last = now
        rate = (step - self.step_start) / max(1e-9, now - self.t_start)
        left = (self.max_steps - step) / rate if rate > 0 else float("inf")
        return (
            f"step {step}/{self.max_steps} ({100 * step / self.max_steps:.0f}%): "
            f"loss {local_loss:.4g} (rank 0, since the last checkpoint), "
            f"{rate:.3g} steps/s, about {format_duration(left)} left"
        )
