"""A local Ray is private (issue #17): the Ray that a densekit step starts listens on 127.0.0.1 only,
densekit never joins a cluster someone started on the machine unless told to (resources.address or
RAY_ADDRESS), the Ray authentication token it writes is mode 0600, and a start-up that fails on a
busy machine is retried with nothing left behind.

Each case runs its driver in a fresh Python process (a step run as from the command line), with
HOME set to a temporary folder so the token file is the test's own. Processes are told apart by
pid: only the ones these tests started are inspected or stopped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

DRIVER = r"""
import json, os, sys
import psutil
import ray
from densekit.raycluster import init_ray

init_ray()
ray.get(ray.remote(lambda: 1).remote())  # a worker process runs too
me = psutil.Process()
tree = {p.pid: p.name() for p in me.children(recursive=True)}
print(json.dumps({"pid": os.getpid(), "gcs": ray.get_runtime_context().gcs_address, "tree": tree}), flush=True)
sys.stdin.readline()  # the test inspects the running processes, then lets go
ray.shutdown()
"""


def _env(home: Path) -> dict[str, str]:
    # No RAY_* from this process: a Ray started in it earlier (the ray_session fixture) leaves
    # RAY_AUTH_MODE=token behind, and `ray start` would then look for a token under the new HOME.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), env.get("PYTHONPATH", "")]),
               RAY_USAGE_STATS_ENABLED="0")
    return env


def _listening(pids: set[int]) -> list[tuple[str, str, int]]:
    out = []
    for c in psutil.net_connections("inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            with_name = psutil.Process(c.pid).name() if psutil.pid_exists(c.pid) else "?"
            out.append((with_name, c.laddr.ip, c.laddr.port))
    return out


class Driver:
    """A densekit driver process that started (or joined) Ray and waits to be inspected."""

    def __init__(self, home: Path, timeout: float = 300):
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=_env(home), cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            if line.startswith("{"):
                break
        if not line.startswith("{"):
            self.stop()
            raise AssertionError(f"the driver did not start Ray: {self.proc.stderr.read()[-3000:]}")
        self.info = json.loads(line)

    def pids(self) -> set[int]:
        p = psutil.Process(self.proc.pid)
        return {p.pid} | {c.pid for c in p.children(recursive=True)}

    def stop(self) -> None:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
            except OSError:
                pass
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        _, alive = psutil.wait_procs(kids, timeout=20)
        for k in alive:
            k.kill()


def test_a_local_ray_listens_on_loopback_only_and_its_token_is_private(tmp_path, tally):
    driver = Driver(tmp_path)
    try:
        names = set(driver.info["tree"].values())
        assert {"gcs_server", "raylet"} <= names, names
        ports = _listening(driver.pids())
        assert ports, "no listening socket found for the driver's Ray processes"
        public = [p for p in ports if p[1] not in LOOPBACK]
        assert not public, f"Ray processes listen beyond 127.0.0.1: {public}"
        assert driver.info["gcs"].startswith("127.0.0.1:"), driver.info["gcs"]
    finally:
        driver.stop()
    token = tmp_path / ".ray" / "auth_token"
    assert token.is_file(), "no Ray token was written"
    mode = stat.S_IMODE(token.stat().st_mode)
    assert mode == 0o600, f"the Ray token {token} has mode {mode:o}, readable by other users"
    tally.fault("local Ray checked for sockets beyond 127.0.0.1 and a public token")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_existing_cluster_on_the_machine_is_not_joined_unless_named(tmp_path, tally):
    """With `ray start --head` running here and no address given, densekit starts its own Ray
    (a bare ray.init() joins the cluster /tmp/ray/ray_current_cluster names)."""
    record = Path("/tmp/ray/ray_current_cluster")
    kept = record.read_bytes() if record.is_file() else None
    port = _free_port()
    ray_cli = Path(sys.executable).parent / "ray"
    log = tmp_path / "ray-start.log"
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        env=_env(tmp_path), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    head_kids: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if record.is_file() and record.read_text().strip().endswith(f":{port}"):
                break
            assert head.poll() is None, f"ray start --head failed:\n{log.read_text(errors='replace')[-3000:]}"
            time.sleep(1)
        else:
            raise AssertionError(f"ray start --head did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        head_kids = psutil.Process(head.pid).children(recursive=True)
        driver = Driver(tmp_path)
        try:
            assert not driver.info["gcs"].endswith(f":{port}"), "densekit joined the cluster started with ray start"
            names = set(driver.info["tree"].values())
            assert "gcs_server" in names, f"densekit joined a cluster instead of starting its own: {names}"
        finally:
            driver.stop()
        tally.fault("a `ray start --head` cluster running on the machine")
    finally:
        # The cluster is the test's own: SIGTERM, then SIGKILL for what is left after 3 s (Ray's
        # processes took ~33 s to wind down on SIGTERM, measured; densekit's side is checked above).
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs([*head_kids, psutil.Process(head.pid)] if head.poll() is None else head_kids,
                                     timeout=3)
        for k in alive:
            k.kill()
        psutil.wait_procs(alive, timeout=30)
        head.wait(30)
        if kept is not None:
            record.write_bytes(kept)
        elif record.is_file() and record.read_text().strip().endswith(f":{port}"):
            record.unlink()
