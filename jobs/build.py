"""`ray job submit` entry point for `densekit build`. Config: configs/build/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
