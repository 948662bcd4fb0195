"""The training loop's progress line between checkpoints (rank 0), against a fake clock."""

from __future__ import annotations

from densekit.train import StepProgress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_progress_line_is_rate_limited_and_estimates_time_left():
    clock = Clock()
    p = StepProgress(every_s=60, max_steps=500, clock=clock)
    clock.t += 59
    assert p.line(10, 0.5) is None  # not due yet
    clock.t += 41  # 100 s in, 50 steps done: 0.5 steps/s, 450 steps left -> 900 s
    line = p.line(50, 0.31234)
    assert line == (
        "step 50/500 (10%): loss 0.3123 (rank 0, since the last checkpoint), 0.5 steps/s, about 15 min 00 s left"
    )
    clock.t += 30
    assert p.line(65, 0.3) is None  # 30 s after the last line
    clock.t += 30
    assert p.line(80, 0.3).startswith("step 80/500 (16%)")


def test_checkpoint_restarts_the_interval_and_resume_counts_from_the_resumed_step():
    clock = Clock()
    p = StepProgress(every_s=60, max_steps=300, start_step=200, clock=clock)  # resumed at step 200
    clock.t += 50
    p.restart()  # a checkpoint line at 50 s
    clock.t += 20
    assert p.line(230, 1.0) is None  # 20 s after the checkpoint
    clock.t += 40  # 110 s since the resume, 40 steps since it: not 240 steps
    line = p.line(240, 1.0)
    assert "0.364 steps/s" in line and "about 2 min 45 s left" in line  # 60 steps at 40/110 steps/s


def test_progress_off_and_no_rate_yet():
    clock = Clock()
    assert StepProgress(every_s=0, max_steps=10, clock=clock).line(5, 1.0) is None
    p = StepProgress(every_s=1, max_steps=10, start_step=3, clock=clock)
    clock.t += 5
    assert p.line(3, 1.0).endswith("0 steps/s, about ? s left")
