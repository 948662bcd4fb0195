"""`ray job submit` entry point for `densekit search`. Config: configs/search/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
