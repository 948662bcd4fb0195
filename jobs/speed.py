"""`ray job submit` entry point for `densekit speed`. Config: configs/speed/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["speed", *sys.argv[1:]]))
