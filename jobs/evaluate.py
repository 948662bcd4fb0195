"""`ray job submit` entry point for `densekit evaluate`. Config: configs/evaluate/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
