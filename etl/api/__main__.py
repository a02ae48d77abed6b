"""``python -m etl.api``: the same as ``tillflow serve``."""
import sys

from tillflow.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
