"""`ray job submit` entry point for `densekit run`. Method: configs/methods/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
