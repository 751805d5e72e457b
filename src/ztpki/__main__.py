"""`python -m ztpki`."""

import sys

from ztpki.cli import main

sys.exit(main())
