"""`python -m installer` runs till-install."""

from installer.cli import main

main()
