"""Allow ``python -m geoct``."""

import sys

from .cli import main

sys.exit(main())
