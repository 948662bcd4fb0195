"""`ray job submit` entry point for `densekit report RUN_DIR` (quality, query speed, stage times)."""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
