"""`ray job submit` entry point for `densekit mine`. Config: configs/mine/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["mine", *sys.argv[1:]]))
