"""`ray job submit` entry point for `densekit train`. Config: configs/train/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
