"""`ray job submit` entry point for `densekit generate`. Config: configs/generate/*.yaml"""

import sys

from densekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
