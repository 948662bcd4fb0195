"""`ray job submit` entry point for `densekit rerank`. Config: configs/rerank/*.yaml"""

import os
import sys

# Python puts this script's folder (jobs/) first on sys.path, where jobs/select.py would shadow the
# standard library's `select` for everything imported after it (socket, asyncio, pyarrow, Ray).
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

from densekit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["rerank", *sys.argv[1:]]))
