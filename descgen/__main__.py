"""``python -m descgen``: the descgen command line."""

from descgen.cli import main

main()
