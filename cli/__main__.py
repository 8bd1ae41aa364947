"""`python -m cli` runs the flowers command line (how local clusters start their worker)."""

from cli.main import main

main()
