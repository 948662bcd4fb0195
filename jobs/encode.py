"""`ray job submit` entry point for `densekit encode`. Config: configs/encode/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["encode", *sys.argv[1:]]))
