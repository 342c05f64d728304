"""``python -m duorank`` runs the CLI."""

from duorank.cli import main

main()
