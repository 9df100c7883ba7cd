"""``python -m expman``: the same as the ``expman`` command."""

import sys

from expman.cli import main

if __name__ == "__main__":
    sys.exit(main())
