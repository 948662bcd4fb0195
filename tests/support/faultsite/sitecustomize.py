"""Test-only: installs densekit_faults' import hook in every Python process the tests start
(subprocesses, local Ray's workers), since tests/conftest.py puts this folder on PYTHONPATH.

Nothing here is shipped: platform/densekit reads no fault variable. A process without
DKTEST_FAULT_PLAN in its environment is left alone.
"""

import os

if os.environ.get("DKTEST_FAULT_PLAN"):
    try:
        import densekit_faults

        densekit_faults.install()
    except Exception as e:  # never break an unrelated process's start-up
        import sys

        print(f"densekit_faults: not installed: {e!r}", file=sys.stderr)
