"""``python -m tensorcask``: the command line."""

import sys

from tensorcask.cli import main

if __name__ == "__main__":
    sys.exit(main())
