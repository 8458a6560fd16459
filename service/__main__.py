"""`python -m service status|watch|clear|cancel|history`: see service/cli.py."""

from .cli import PROG, cli

cli.main(prog_name=PROG)
