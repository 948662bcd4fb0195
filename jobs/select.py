"""`ray job submit` entry point for `densekit select`. Config: configs/select/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["select", *sys.argv[1:]]))
