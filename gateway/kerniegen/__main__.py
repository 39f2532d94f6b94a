"""`python -m gateway.kerniegen`: run KernieGen from the command line (see cli.py)."""

from __future__ import annotations

import sys

from gateway.kerniegen.cli import main

if __name__ == "__main__":
    sys.exit(main())
