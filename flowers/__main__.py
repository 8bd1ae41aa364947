"""`python -m flowers` runs the flowers command line."""

from flowers.cli.main import main

main()
