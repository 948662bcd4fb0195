"""`ray job submit` entry point for `densekit index`. Config: configs/index/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
