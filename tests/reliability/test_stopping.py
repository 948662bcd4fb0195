"""Ctrl-C and SIGTERM are never lost (densekit.stopping), in three places where Python loses them.

Each scenario runs in a fresh Python, once with a plain handler that raises (the control: it shows
the scenario really loses the stop, or prints the noise) and once with densekit's latch installed as
the CLI installs it. The method-run tests in test_random_kills.py send the same signals to a real run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROLOGUE = """
import logging, os, signal, sys, time
from densekit import stopping
from densekit.logs import Progress
SIG = signal.SIG{name}
if sys.argv[1] == "latch":
    stopping.install()
else:  # what a plain handler does: raise, and nothing more
    def plain(signum, frame):
        raise KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(15)
    signal.signal(signal.SIGTERM, plain)
def stop_here():
    os.kill(os.getpid(), SIG)
    for _ in range(100000):  # the handler runs at one of these bytecodes
        pass
"""

# The stop lands in a finaliser: Python prints "Exception ignored" and drops it.
IN_A_FINALISER = """
class Finaliser:
    def __del__(self):
        stop_here()
x = Finaliser()
del x
time.sleep(3)
print("still running after the signal")
"""

# The stop lands in a library that catches everything; densekit's next progress update raises it.
IN_A_LIBRARY_THAT_CATCHES_ALL = """
def library_call():
    try:
        stop_here()
    except BaseException:
        pass
library_call()
progress = Progress(logging.getLogger("work"), "work", total=20, live=False)
for _ in range(20):
    time.sleep(0.1)
    progress.update(1)
print("still running after the signal")
"""

# The stop lands while an object is being built; its finaliser then fails on the half-built object
# (Ray Data's Dataset.__del__: "'Dataset' object has no attribute '_current_executor'").
HALF_BUILT = """
class Half:
    def __init__(self):
        stop_here()
        self.executor = None
    def __del__(self):
        if not self.executor:
            pass
try:
    Half()
except (KeyboardInterrupt, SystemExit):
    print("stopped")
"""


def _run(body: str, name: str, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    script = PROLOGUE.replace("{name}", name) + body
    # SIGINT at its default, as in a terminal's foreground job (a background pytest ignores it).
    return subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# SIGINT: a KeyboardInterrupt that ends Python ends it by the signal itself; SIGTERM: sys.exit(15).
CODES = [("INT", -signal.SIGINT), ("TERM", signal.SIGTERM)]


@pytest.mark.parametrize("name, code", CODES)
def test_a_stop_python_drops_in_a_finaliser_is_delivered_again(name, code):
    lost = _run(IN_A_FINALISER, name, "plain")
    assert "Exception ignored" in lost.stderr and "still running" in lost.stdout, lost.stderr
    stopped = _run(IN_A_FINALISER, name, "latch")
    assert "still running" not in stopped.stdout, stopped.stderr
    assert "Exception ignored" not in stopped.stderr, stopped.stderr
    assert stopped.returncode == code, (stopped.returncode, stopped.stderr)


@pytest.mark.parametrize("name, code", CODES)
def test_a_stop_a_library_swallows_is_raised_at_the_next_progress_update(name, code):
    lost = _run(IN_A_LIBRARY_THAT_CATCHES_ALL, name, "plain")
    assert lost.returncode == 0 and "still running" in lost.stdout, lost.stderr
    stopped = _run(IN_A_LIBRARY_THAT_CATCHES_ALL, name, "latch")
    assert "still running" not in stopped.stdout, stopped.stderr
    assert stopped.returncode == code, (stopped.returncode, stopped.stderr)


@pytest.mark.parametrize("name", ["INT", "TERM"])
def test_a_half_built_objects_finaliser_does_not_print_a_traceback_after_a_stop(name):
    noisy = _run(HALF_BUILT, name, "plain")
    assert "stopped" in noisy.stdout and "AttributeError" in noisy.stderr, noisy.stderr
    quiet = _run(HALF_BUILT, name, "latch")
    assert "stopped" in quiet.stdout, quiet.stderr
    assert "Traceback" not in quiet.stderr and "Exception ignored" not in quiet.stderr, quiet.stderr
    assert quiet.returncode == 0


def test_other_exceptions_python_cannot_raise_are_still_printed_when_no_stop_was_asked():
    body = """
class Broken:
    def __del__(self):
        raise ValueError("a real bug in a finaliser")
x = Broken()
del x
print("ran on")
"""
    out = _run(body, "TERM", "latch")
    assert "ran on" in out.stdout and "ValueError: a real bug in a finaliser" in out.stderr, out.stderr
