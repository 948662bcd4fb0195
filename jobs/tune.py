"""`ray job submit` entry point for `densekit tune`. Config: configs/tune/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
