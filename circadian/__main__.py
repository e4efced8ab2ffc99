"""Run as: python -m circadian [COMMAND] (same as the `circadian` console script)."""

from circadian.cli import main

main()
