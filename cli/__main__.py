"""`python -m flowers.cli` runs the flowers command line (how local clusters start their worker)."""

from flowers.cli.main import main

main()
