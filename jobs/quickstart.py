"""`ray job submit` entry point for `densekit quickstart` (the packaged quickstart method)."""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["quickstart", *sys.argv[1:]]))
