"""Test-only fault injection for densekit, from outside the package.

tests/conftest.py puts this folder on PYTHONPATH, so every process the tests start (a `densekit`
subprocess, the workers of a local Ray started by the tests or by such a subprocess) runs
sitecustomize.py, which calls install() when DKTEST_FAULT_PLAN names a plan file. install() adds an
import hook that wraps, as they are imported, functions densekit calls anyway:

- densekit.methods.write_json_atomic: after the method runner records stage S as done
  ({"kill_after_stage": S}), the process ends at once (os._exit(137), like kill -9);
- densekit.train.progress.StepProgress.line (rank 0, each step that is not a checkpoint step):
  {"kill_after_step": N, "delay_s": D} ends the worker D s after step N (os._exit(1));
  {"hang_after_step": M} stops it after step M until killed (marker <marker>.hang);
- densekit.train.checkpoints.report_checkpoint (rank 0): {"fail_checkpoint_at_step": N} fails
  step N's checkpoint half-written (the model saved, then ENOSPC).

The plan is a JSON file read at each call, so a test may write it after Ray started
(tests/conftest.py's `fault_plan` fixture). Each fault fires once per marker file ("marker" in the
plan), created atomically, which also records what fired.
"""

from __future__ import annotations

import errno
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
from pathlib import Path

PLAN_ENV = "DKTEST_FAULT_PLAN"


def plan() -> dict:
    path = os.environ.get(PLAN_ENV)
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def fire_once(marker: str, text: str) -> bool:
    """Create `marker` (atomically); False when it exists: the fault already fired."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _log(message: str) -> None:
    print(f"fault injection: {message}", file=sys.stderr, flush=True)


# --- the wrappers ----------------------------------------------------------------------------------


def _patch_methods(module) -> None:
    original = module.write_json_atomic

    def write_json_atomic(path, data, *args, **kwargs):
        result = original(path, data, *args, **kwargs)
        p = plan()
        stage = p.get("kill_after_stage")
        if stage and isinstance(data, dict):
            entry = data.get("stages", {}).get(stage, {})
            done = isinstance(entry, dict) and "seconds" in entry and not entry.get("pending")
            if done and fire_once(p["marker"], f"killed after stage {stage}\n"):
                _log(f"killing the run after stage {stage}")
                os._exit(137)
        return result

    module.write_json_atomic = write_json_atomic


def _after_step(step: int) -> None:
    p = plan()
    if p.get("hang_after_step") == step and fire_once(p["marker"] + ".hang", f"hang: rank 0, step {step}\n"):
        _log(f"worker stops after step {step} until killed")
        while True:
            time.sleep(1)
    if p.get("kill_after_step") == step and fire_once(p["marker"], f"kill: rank 0, step {step}\n"):
        # Ray Train registers a reported checkpoint when it next polls the worker (every 2 s): a
        # worker that dies sooner resumes from the checkpoint before.
        time.sleep(float(p.get("delay_s", 0)))
        _log(f"killing this worker after step {step}")
        os._exit(1)


def _patch_progress(module) -> None:
    original = module.StepProgress.line

    def line(self, step, local_loss):
        _after_step(step)
        return original(self, step, local_loss)

    module.StepProgress.line = line


def _patch_checkpoints(module) -> None:
    original = module.report_checkpoint

    def report_checkpoint(metrics, state, inner, optimizer, scheduler, scaler, rank, is_best):
        p = plan()
        step = state["step"]
        if (rank == 0 and p.get("fail_checkpoint_at_step") == step
                and fire_once(p["marker"], f"checkpoint_write: rank {rank}, step {step}\n")):
            save = inner.student.save

            def save_then_fail(path, *a, **k):
                save(path, *a, **k)
                _log(f"failing the checkpoint of step {step} half-written")
                raise OSError(errno.ENOSPC, "No space left on device (injected while writing a checkpoint)")

            inner.student.save = save_then_fail
            try:
                return original(metrics, state, inner, optimizer, scheduler, scaler, rank, is_best)
            finally:
                del inner.student.save
        return original(metrics, state, inner, optimizer, scheduler, scaler, rank, is_best)

    module.report_checkpoint = report_checkpoint


PATCHES = {
    "densekit.methods": _patch_methods,
    "densekit.train.progress": _patch_progress,
    "densekit.train.checkpoints": _patch_checkpoints,
}


# --- the import hook -------------------------------------------------------------------------------


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        patch = PATCHES.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


def install() -> None:
    """Patch the modules already imported; hook those imported later. Idempotent."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _Finder())
