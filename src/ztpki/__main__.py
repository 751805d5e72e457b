"""`python -m ztpki`: the same command as `ztpki`."""

import sys

from ztpki.cli import main

if __name__ == "__main__":
    sys.exit(main())
