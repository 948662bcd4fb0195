"""`ray job submit` entry point for `densekit import`. Config: configs/import/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["import", *sys.argv[1:]]))
