"""`ray job submit` end to end: a real Ray head started with `ray start --head` on loopback, token
authentication on, densekit shipped to the job by jobs/runtime_env.yaml (py_modules), a step run as
a job and checked by its outputs, a failing job checked by its status and message.

The head's processes cannot import the developer's densekit install (a sitecustomize hides it), so
a job that imports densekit proves the runtime env shipped it. Teardown stops only this head's
processes (its process group, its temp dir, its GCS port): never `ray stop`, which stops every Ray
on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from densekit.artifacts import read_manifest, read_table, table_rows

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENV = "jobs/runtime_env.yaml"
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command of this interpreter
TIMEOUT = 300  # seconds for any one CLI call; a hung job fails the test instead of hanging CI

# Ports `ray start --head` would otherwise take at fixed defaults (6379, 8265, 10001, 52365, ...),
# colliding with other Ray clusters on the machine.
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)

# Test-only: remove the developer's densekit (editable install: the repo's platform/ source root on
# sys.path, or setuptools' editable finder) from every process of the head.
HIDE_DENSEKIT = """\
import os, sys
_hidden = {hidden!r}
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _hidden]
sys.meta_path[:] = [
    f for f in sys.meta_path
    if not (getattr(f, "__module__", "") or "").startswith("__editable___densekit")
]
"""

PROBE = """\
import densekit, ray
ray.init()
where = ray.remote(num_cpus=1)(lambda: __import__("densekit").__file__)
print("DRIVER densekit", densekit.__file__)
print("WORKER densekit", ray.get(where.remote()))
"""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class RayHead:
    """A running head and the environment a client needs to talk to it (address + token)."""

    dashboard_url: str
    gcs_port: int
    temp_dir: Path
    token: str
    client_env: dict

    def ray(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*RAY_CLI, *args],
            cwd=ROOT,  # submit from the repository root, as the README says
            env=env or self.client_env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def submit(
        self, *entrypoint: str, runtime_env: str | None = RUNTIME_ENV
    ) -> tuple[str, subprocess.CompletedProcess]:
        """`ray job submit [--runtime-env ...] -- ENTRYPOINT`: waits for the job, returns its id."""
        sid = f"dk-test-{uuid.uuid4().hex[:10]}"
        flags = ["--submission-id", sid] + (["--runtime-env", runtime_env] if runtime_env else [])
        return sid, self.ray("job", "submit", *flags, "--", *entrypoint)

    def status(self, sid: str) -> str:
        """The job's status from the Jobs REST API (what `ray job status` prints, unformatted)."""
        return _get_json(f"{self.dashboard_url}/api/jobs/{sid}", self.token)["status"]

    def logs(self, sid: str) -> str:
        out = self.ray("job", "logs", sid)
        assert out.returncode == 0, out.stderr
        return out.stdout


def _head_processes(pgid: int, temp_dir: Path, gcs_port: int) -> list[psutil.Process]:
    """Every process of this head: its process group, anything naming its temp dir or GCS port,
    and all their descendants (workers, job supervisors, job drivers in their own sessions)."""
    gcs = re.compile(rf"127\.0\.0\.1:{gcs_port}(?!\d)")  # e.g. the client server's --address
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if (
                os.getpgid(p.pid) == pgid
                or any(str(temp_dir) in a for a in cmd)
                or any(gcs.search(a) for a in cmd)
            ):
                found[p.pid] = p
        except (psutil.Error, ProcessLookupError):
            pass
    for p in list(found.values()):
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop_head(pgid: int, temp_dir: Path, gcs_port: int) -> None:
    procs = _head_processes(pgid, temp_dir, gcs_port)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    # The head is the test's own: what is left 3 s after SIGTERM is killed (Ray's processes took
    # 15 s and more to wind down on SIGTERM, test_local_ray measured 33 s).
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def _wait_for_dashboard(url: str, token: str, deadline: float) -> None:
    while True:
        try:
            _get_json(f"{url}/api/version", token)
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray dashboard at {url} did not come up")
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_head():
    # A short temp dir of our own: Ray's unix socket paths live under it (~107 characters max).
    temp_dir = Path(tempfile.mkdtemp(prefix="dkray-")).resolve()
    token = secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    hide = temp_dir / "hide_densekit"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        HIDE_DENSEKIT.format(hidden=os.path.realpath(ROOT / "platform"))
    )

    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHONPATH"))}
    base.update(
        RAY_AUTH_MODE="token",  # token authentication, as on the real cluster (cluster.yaml)
        RAY_AUTH_TOKEN_PATH=str(token_path),  # never ~/.ray/auth_token: shared with other users
        RAY_USAGE_STATS_ENABLED="0",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    # Ray's single-machine mode: every port binds to 127.0.0.1 (else --node-ip-address 127.0.0.1 is
    # rewritten to the host's routable IP and GCS/raylet listen on all interfaces).
    head_env = {**base, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(hide)}
    cmd = [
        *RAY_CLI,
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--num-cpus",
        "2",
        "--num-gpus",
        "0",
        "--temp-dir",
        str(temp_dir / "ray"),
        "--disable-usage-stats",
    ]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    log = open(temp_dir / "ray_start.log", "w")
    proc = subprocess.Popen(
        cmd,
        cwd=temp_dir,
        env=head_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # own process group: found again at teardown
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        rc = proc.wait(timeout=TIMEOUT)
        assert rc == 0, (temp_dir / "ray_start.log").read_text()
        _wait_for_dashboard(url, token, time.monotonic() + 120)
        yield RayHead(
            url, ports["--port"], temp_dir, token, {**base, "RAY_API_SERVER_ADDRESS": url}
        )
    finally:
        log.close()
        _stop_head(proc.pid, temp_dir, ports["--port"])
        assert not _head_processes(proc.pid, temp_dir, ports["--port"]), "head processes survived"
        shutil.rmtree(temp_dir, ignore_errors=True)


def _under_runtime_env(path: str, head: RayHead) -> bool:
    """True if `path` is inside what the runtime env unpacked under this head's temp dir."""
    real = os.path.realpath(path)
    return real.startswith(str(head.temp_dir)) and "/runtime_resources/py_modules_files/" in real


def test_generate_runs_as_a_job_and_writes_its_outputs(ray_head, tmp_path):
    out = tmp_path / "shared" / "task"  # absolute: like an NFS path every node sees
    # The job writes only to `out`: nothing appears or changes in the checkout (which may already
    # hold runs/quickstart: the README's set-up command runs the quickstart there).
    before = _files(ROOT / "shared", ROOT / "runs")
    sid, r = ray_head.submit(
        "python",
        "jobs/generate.py",
        "configs/generate/tiny.yaml",
        f"output={out}",
        "num_docs=120",
        "num_train_queries=30",
        "num_dev_queries=10",
        "seed=3",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert ray_head.status(sid) == "SUCCEEDED"

    logs = ray_head.logs(sid)
    m = re.search(r"densekit \S+ from (\S+): generate", logs)
    assert m, logs
    assert _under_runtime_env(m.group(1), ray_head), m.group(1)

    read_manifest(out, deep=True)
    for table in ("corpus", "queries", "qrels/train", "qrels/dev"):
        read_manifest(out / table, deep=True)  # each table complete, checksums intact
    assert table_rows(out / "corpus") == 120
    assert table_rows(out / "queries") == 40
    assert table_rows(out / "qrels" / "train") == 30
    assert table_rows(out / "qrels" / "dev") == 10
    corpus = set(read_table(out / "corpus", columns=["pid"]).column("pid").to_pylist())
    queries = set(read_table(out / "queries", columns=["qid"]).column("qid").to_pylist())
    assert len(corpus) == 120 and len(queries) == 40  # ids unique
    for split in ("train", "dev"):
        qrels = read_table(out / "qrels" / split).to_pydict()
        assert set(qrels["pid"]) <= corpus and set(qrels["qid"]) <= queries
    assert _files(ROOT / "shared", ROOT / "runs") == before


def _files(*roots: Path) -> dict[str, int]:
    """Every file under `roots` with its modification time (ns)."""
    return {str(f): f.stat().st_mtime_ns for r in roots if r.exists() for f in r.rglob("*") if f.is_file()}


def test_only_the_runtime_env_provides_densekit(ray_head):
    # Without the runtime env the head's Python cannot import densekit at all...
    sid, r = ray_head.submit("python", "-c", "import densekit", runtime_env=None)
    assert r.returncode != 0
    assert ray_head.status(sid) == "FAILED"
    assert "No module named 'densekit'" in ray_head.logs(sid)

    # ...with it, the driver and a Ray task on a worker both import the shipped copy.
    sid, r = ray_head.submit("python", "-c", PROBE)
    assert r.returncode == 0, r.stdout + r.stderr
    logs = ray_head.logs(sid)
    places = dict(re.findall(r"^(DRIVER|WORKER) densekit (\S+)$", logs, re.M))
    assert set(places) == {"DRIVER", "WORKER"}, logs
    for who, path in places.items():
        assert _under_runtime_env(path, ray_head), f"{who} imported densekit from {path}"


def test_bad_config_fails_the_job_with_densekit_message(ray_head, tmp_path):
    sid, r = ray_head.submit(
        "python",
        "jobs/generate.py",
        "configs/generate/tiny.yaml",
        f"output={tmp_path / 'x'}",
        "nmu_docs=10",
    )
    assert r.returncode != 0
    assert ray_head.status(sid) == "FAILED"
    logs = ray_head.logs(sid)
    assert "unknown config key 'nmu_docs'" in logs and "Did you mean 'num_docs'?" in logs, logs
    assert "Traceback" not in logs  # densekit's own error, not a crash
    assert not (tmp_path / "x").exists()


def test_head_refuses_clients_without_the_token(ray_head):
    env = {k: v for k, v in ray_head.client_env.items() if not k.startswith("RAY_AUTH")}
    r = ray_head.ray("job", "list", env=env)
    assert r.returncode != 0
    assert "Authentication required" in r.stdout + r.stderr
    wrong = {**ray_head.client_env, "RAY_AUTH_TOKEN": "0" * 64}
    r = ray_head.ray("job", "list", env=wrong)
    assert r.returncode != 0
    assert "Authentication failed" in r.stdout + r.stderr
