"""One writer per output: a step holds a lock on its output directory while it runs, so a second
densekit process that would write the same output (the same command started twice, two methods
sharing a run folder) is refused at once, naming the holder, before it reads or writes anything.
A holder killed with SIGKILL leaves no lock behind; a finished one leaves no file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from densekit.artifacts import lock_path, output_lock
from densekit.cli import STEPS
from densekit.config import EvaluateConfig, load_config
from densekit.errors import OutputBusyError

HOLDER = textwrap.dedent("""
    import sys
    from densekit.artifacts import output_lock
    with output_lock(sys.argv[1], "holder-step"):
        print("locked", flush=True)
        sys.stdin.readline()
""")


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of tmp_path/out until its stdin closes."""
    procs = []

    def start(directory):
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "locked"
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=30)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    out = tmp_path / "out"
    p = holder(out)
    with pytest.raises(OutputBusyError, match=rf"{out} is being written by pid {p.pid} .*holder-step"):
        with output_lock(out, "mine"):
            pytest.fail("the lock was taken twice")
    p.stdin.close()
    p.wait(timeout=30)
    assert not lock_path(out).exists()  # released and removed by its holder
    with output_lock(out, "mine"):
        assert lock_path(out).read_text().startswith(f"pid {os.getpid()} ")
    assert not lock_path(out).exists()


def test_a_killed_holder_leaves_no_lock(tmp_path, holder):
    out = tmp_path / "out"
    p = holder(out)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert lock_path(out).exists()  # its file stays, but the kernel dropped its lock
    with output_lock(out, "mine"):
        pass
    assert not lock_path(out).exists()


def test_a_step_is_refused_before_it_touches_a_locked_output(tmp_path, holder):
    # evaluate's inputs do not even exist: the lock is checked before the step reads anything.
    out = tmp_path / "eval"
    holder(out)
    cfg = load_config(EvaluateConfig, overrides=[f"run={tmp_path / 'run'}", f"qrels={tmp_path / 'qrels'}",
                                                 f"output={out}"])
    with pytest.raises(OutputBusyError, match="evaluate"):
        STEPS["evaluate"].function()(cfg)
    assert not out.exists()
