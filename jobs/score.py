"""`ray job submit` entry point for `densekit score`. Config: configs/score/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
