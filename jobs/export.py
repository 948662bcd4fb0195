"""`ray job submit` entry point for `densekit export`. Config: configs/export/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
