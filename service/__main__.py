"""`python -m service status|watch|clear|cancel|history`: see service/cli.py."""

import sys

from .cli import main

sys.exit(main())
