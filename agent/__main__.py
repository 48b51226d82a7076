"""`python -m agent` runs the till-agent command line."""

from agent.cli import main

main()
