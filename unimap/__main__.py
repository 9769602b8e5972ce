"""`python -m unimap` is the `unimap` command."""

from unimap.cli import main

main()
