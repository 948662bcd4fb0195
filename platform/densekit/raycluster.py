"""Connecting to Ray: the job's cluster under `ray job submit`, else a local Ray started on demand.

Every step that uses Ray calls `init_ray(cfg.resources)` first and nothing else Ray-global, so the
same command line runs on a laptop and as a submitted job.

A local Ray is private to this machine and this run: its processes listen on 127.0.0.1 only (never
on the machine's network interfaces), the dashboard is off, densekit never joins a cluster that
someone started on the machine unless `resources.address` or RAY_ADDRESS names it, and the
authentication token it creates for Ray is readable by its owner only (mode 0600). Start-up is
retried on a busy machine, and what a failed attempt started is stopped before the next one.

Output: unless `densekit -v`, Ray's own messages stay out of the run's output: the driver's Ray
logger at ERROR and its C++ log at fatal, Ray Data's progress off, and of the workers' output only
densekit's own log lines are printed (the rest stays in the session's worker log files). Every
worker of the job runs `worker_setup` first (the runtime_env's worker_process_setup_hook).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from densekit import stopping
from densekit.errors import DensekitError

logger = logging.getLogger(__name__)

LOCAL_IP = "127.0.0.1"
# Ray gives a starting node 30 s (hard-coded in ray._private.node) to register with its GCS; at a
# load of 10-40 that is not enough. A local start-up waits up to REGISTER_WAIT_S more per attempt
# (see _patient_registration), and is tried START_ATTEMPTS times in all.
REGISTER_WAIT_S = 180.0
START_ATTEMPTS = 3


def init_ray(resources: Any | None = None) -> None:
    """Attach to Ray if it is not already initialised (tests and drivers may have started it).

    Resolution order: an already-initialised Ray; `resources.address`; the RAY_ADDRESS environment
    variable (set inside `ray job submit` jobs); otherwise a new local Ray on this machine, bound to
    127.0.0.1 (a cluster started with `ray start` is joined only when named: address=auto or its
    address).
    """
    import ray

    from densekit import logs

    if "ray.train" in sys.modules:  # a Train driver (also inside a Tune trial, where Ray is up)
        from densekit.raytrain_compat import patch_placement_group_cleaner

        patch_placement_group_cleaner()
    if ray.is_initialized():
        return
    address = getattr(resources, "address", None) or os.environ.get("RAY_ADDRESS")
    verbose = logs.verbose()
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": True,
        "runtime_env": worker_runtime_env(),
    }
    with _driver_log_level(None if verbose else "fatal"):
        if address:
            logger.info("connecting to Ray at %s", address)
            ray.init(address=address, **kwargs)
        else:
            start_local_ray(**kwargs)
    stopping.reinstall()  # ray.init put its own handlers on SIGTERM
    stopping.check()  # a Ctrl-C or SIGTERM while `import ray` or ray.init ran may have been lost there
    if not verbose:
        logs.quiet_third_party()
        logs.quiet_ray_data()
        _quiet_worker_output()
    res = ray.cluster_resources()
    logger.info(
        "Ray: %d node(s), %g CPU, %g GPU",
        len([n for n in ray.nodes() if n.get("Alive")]),
        res.get("CPU", 0),
        res.get("GPU", 0),
    )


SETUP_HOOK = "densekit.raycluster.worker_setup"


def worker_runtime_env() -> dict[str, Any]:
    """The job's runtime_env: densekit's set-up hook in every worker, the verbosity and (quiet)
    the quiet environment of the libraries. Under `ray job submit` the job's own runtime_env wins:
    a key it already sets is left out (Ray refuses to merge two values of one key)."""
    from densekit import logs

    env = {logs.VERBOSE_ENV: "1" if logs.verbose() else "0", **openmp_env()}
    if not logs.verbose():
        env.update({k: os.environ.get(k, v) for k, v in logs.QUIET_ENV.items()})
    runtime_env: dict[str, Any] = {"env_vars": env, "worker_process_setup_hook": SETUP_HOOK}
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        import json

        try:
            job_env = (json.loads(job).get("runtime_env") or {})
        except (ValueError, AttributeError):
            job_env = {}
        taken = set(job_env.get("env_vars") or {})
        runtime_env["env_vars"] = {k: v for k, v in env.items() if k not in taken}
        if "worker_process_setup_hook" in job_env or any("SETUP_HOOK" in k for k in taken):
            runtime_env.pop("worker_process_setup_hook")
    return runtime_env


# What the OpenMP runtime reads to choose how idle threads wait (GNU: OMP_WAIT_POLICY, GOMP_SPINCOUNT).
OMP_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def openmp_options(threads: int) -> dict[str, Any]:
    """Ray options (`ray.remote(**...)`) for a task or actor that runs FAISS on `threads` OpenMP
    threads: a runtime_env with OMP_WAIT_POLICY=PASSIVE, so that its threads sleep, not spin, while
    they wait for each other. GNU OpenMP (the faiss-cpu wheel's) spins by default, which starves the
    threads doing the work as soon as anything else runs on the same cores (another job, Ray's own
    processes): on 2 cores beside another 2-thread job, training IVF1024,PQ32 on 100,000 vectors
    took 4.5x as long, searching in batches of 10 queries 3.4x (docs/benchmarks.md, "OpenMP threads
    on a shared machine"; `bench/omp_wait.py` measures it). Nothing for one
    thread, nor where the driver's environment already sets a wait policy (the user's, or a
    submitted job's runtime_env): theirs is kept. Only `env_vars` is given, which Ray merges with
    the job's; a task with its own environment runs in workers started for it.
    """
    env = openmp_env()
    return {"runtime_env": {"env_vars": env}} if threads > 1 and env else {}


def openmp_env() -> dict[str, str]:
    """{OMP_WAIT_POLICY: PASSIVE} unless the driver's environment chooses a wait policy itself.

    The job's runtime_env (worker_runtime_env) carries it to every worker a densekit driver starts,
    torch's too: encoding MiniLM on 2 threads beside the tier's training it gave 28.6-28.9 docs/s
    against 22.3-23.5 with spinning threads, and at idle the same speed (55.4-56.9 against
    54.6-56.6). openmp_options adds it to FAISS's tasks where Ray was started by someone else.
    """
    if any(k in os.environ for k in OMP_WAIT_VARS):
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def worker_setup() -> None:
    """Ray's worker_process_setup_hook: runs in every worker process of a densekit driver's job
    before its first task.

    - RAY_ADDRESS := this cluster's GCS address. Ray's State API inside a worker (Ray Train's
      PlacementGroupCleaner) otherwise looks for "the" cluster among every Ray on the machine and
      fails with "Found multiple active Ray instances" when another run's Ray is up.
    - densekit's loggers write `HH:MM:SS LEVEL densekit.x: message` lines (what a quiet driver
      passes through), and unless verbose, Ray's, Hugging Face's and FAISS's output is quiet.
    """
    import logging as _logging

    from densekit import logs

    try:
        import ray

        gcs = ray.get_runtime_context().gcs_address
        if gcs:
            os.environ["RAY_ADDRESS"] = gcs
    except Exception:  # noqa: BLE001 - never fail a worker's start for this
        pass
    own = _logging.getLogger("densekit")
    if not any(getattr(h, "_densekit", False) for h in own.handlers):
        handler = _logging.StreamHandler(sys.stderr)
        handler.setFormatter(_logging.Formatter(logs.FORMAT, logs.DATEFMT))
        handler._densekit = True  # type: ignore[attr-defined]
        own.addHandler(handler)
        own.propagate = False
        own.setLevel(os.environ.get("DENSEKIT_LOG_LEVEL", "INFO"))
    if not logs.verbose():
        logs.quiet_third_party()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _quiet_worker_output() -> None:
    """A quiet driver prints, of its workers' output, only densekit's own log lines (without
    Ray's `(Actor pid=...)` prefix); everything else stays in the session's worker log files.
    `-v` keeps Ray's printing of all of it."""
    from densekit import logs

    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray layout: workers are quiet by their set-up hook
        return

    def print_own_lines(data: dict) -> None:
        lines = [_ANSI.sub("", line) for line in data.get("lines", [])]
        own = [line for line in lines if logs_own_line(line)]
        for line in own:
            logs.write_line(line.rstrip("\n"))
        crash = next((line for line in lines if line.startswith(("Fatal Python error", "*** SIGSEGV"))), None)
        if crash:  # not printed whole, but never hidden: a crashed worker is said in one line
            who = data.get("actor_name") or data.get("task_name") or "worker"
            logger.warning("a Ray worker crashed (%s, pid %s): %s; its full output is in the Ray session's "
                           "logs/worker-*-%s.err (or rerun with -v)", who, data.get("pid"), crash.strip(),
                           data.get("pid"))

    if ray_worker.global_worker.mode != ray_worker.SCRIPT_MODE:
        return  # a worker (a Tune trial's driver code): its output goes to its own log
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", print_own_lines)


def logs_own_line(line: str) -> bool:
    from densekit.logs import OWN_LINE

    return bool(OWN_LINE.match(line))


def start_local_ray(attempts: int = START_ATTEMPTS, **kwargs: Any) -> None:
    """Start a new local Ray (never join one), bound to 127.0.0.1, without dashboard.

    A start-up that fails (e.g. "The current node timed out during startup" on a loaded machine)
    is retried `attempts` times in all; before each retry and after the last failure, every Ray
    process the failed attempt started (gcs_server, raylet, agents, workers) is stopped, so none
    is left behind.

    Raises:
        DensekitError: no attempt started Ray; says how loaded the machine was.
    """
    import ray

    _ensure_private_token()
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        before = _descendant_pids()
        try:
            with _loopback_node(), _patient_registration(REGISTER_WAIT_S, before):
                ray.init(address="local", include_dashboard=False, _node_ip_address=LOCAL_IP, **kwargs)
        except (TypeError, ValueError):
            _stop_new_processes(before)
            raise  # a wrong argument: no retry helps
        except Exception as e:
            last = e
            _stop_new_processes(before)
            load = _load()
            if attempt < attempts:
                logger.warning("local Ray did not start (attempt %d of %d, load %s): %s; retrying",
                               attempt, attempts, load, str(e).strip().splitlines()[0] if str(e).strip() else e)
                time.sleep(2.0 * attempt)
            continue
        node = getattr(ray._private.worker.global_worker, "node", None)
        ip = getattr(node, "node_ip_address", None)
        if ip is not None and ip != LOCAL_IP:
            logger.warning("local Ray runs on %s, not %s: its ports may be reachable from the network", ip, LOCAL_IP)
        return
    raise DensekitError(
        f"a local Ray did not start in {attempts} attempts (load average {_load()} on {os.cpu_count()} "
        f"CPUs): {last}. Everything those attempts started was stopped. Rerun when the machine is less "
        "busy, or start Ray yourself (`ray start --head --node-ip-address=127.0.0.1`) and pass "
        "resources.address=auto"
    ) from last


@contextlib.contextmanager
def _driver_log_level(level: str | None) -> Iterator[None]:
    """While ray.init connects this driver, RAY_BACKEND_LOG_LEVEL=`level` for its core worker
    only (Ray's C++ log of the driver process, which writes to stderr, e.g. "core_worker.cc: Actor
    with class name ... has constructor arguments in the object store"). The processes ray.init
    starts before (GCS, raylet: their log files) keep their level. None: change nothing."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        yield
        return
    original = getattr(ray_worker, "connect", None)
    if level is None or original is None:
        yield
        return

    def connect(*args: Any, **kwargs: Any) -> Any:
        before = os.environ.get("RAY_BACKEND_LOG_LEVEL")
        os.environ["RAY_BACKEND_LOG_LEVEL"] = level
        # Ray announces the level it read ("logging.cc: Set ray log level from environment
        # variable ...") on file descriptor 2: that one line goes to /dev/null. A failed connect
        # raises, and says why, after the descriptor is back.
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            return original(*args, **kwargs)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
            if before is None:
                os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
            else:
                os.environ["RAY_BACKEND_LOG_LEVEL"] = before

    ray_worker.connect = connect
    try:
        yield
    finally:
        ray_worker.connect = original


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Let `ray.init(_node_ip_address="127.0.0.1")` mean it: Ray rewrites a loopback node address
    into the machine's outward address (services.resolve_ip_for_localhost), and its servers bind to
    the node address. Only for a local start, and only while ray.init runs."""
    try:
        from ray._private import services
    except ImportError:  # another Ray layout: the warning after start-up says what happened
        yield
        return
    original = getattr(services, "resolve_ip_for_localhost", None)
    if original is None:
        yield
        return
    services.resolve_ip_for_localhost = lambda host: host if host == LOCAL_IP else original(host)
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


@contextlib.contextmanager
def _patient_registration(wait_s: float, before: set[int]) -> Iterator[None]:
    """While ray.init starts a local node, let its check that the node registered with the GCS
    (services.get_node, polled for 30 s) keep polling up to `wait_s` seconds per call: on a loaded
    machine the raylet registers, only late. Not once the raylet this start-up spawned (a child
    not in `before`) has exited: it never will then (e.g. Ray's raylet gives its dashboard agent
    15 s to start and aborts after)."""
    try:
        from ray._private import services
    except ImportError:
        yield
        return
    original = getattr(services, "get_node", None)
    if original is None:
        yield
        return

    def get_node(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return original(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() >= deadline or _raylet_exited(before):
                    raise
                time.sleep(0.5)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original


def _ensure_private_token() -> None:
    """Ray turns on token authentication for a new local cluster and writes the token, if none
    exists, with the default file mode (readable by every user). Write it first, mode 0600."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.exists():
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:
                logger.warning("%s (the Ray authentication token) is readable by other users: run chmod 600 %s",
                               path, path)
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        logger.warning("could not write the Ray authentication token %s (%s): Ray writes it", path, e)
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    logger.info("wrote a Ray authentication token to %s (mode 600)", path)


def _raylet_exited(before: set[int]) -> bool:
    import psutil

    try:
        for p in psutil.Process().children(recursive=True):
            if p.pid not in before and p.name() == "raylet":
                return p.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False
    return False


def _descendant_pids() -> set[int]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return {p.pid for p in psutil.Process().children(recursive=True)}
    return set()


def _stop_new_processes(before: set[int]) -> None:
    """Stop what a failed start-up left: ray.shutdown, then every process this driver started
    since (gcs_server, raylet, agents, workers), by pid; SIGTERM, then SIGKILL after 10 s."""
    import psutil
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    if procs:
        logger.info("stopped %d process(es) left by the failed Ray start-up", len(procs))


def _load() -> str:
    with contextlib.suppress(OSError, AttributeError):
        return f"{os.getloadavg()[0]:.1f}"
    return "unknown"
