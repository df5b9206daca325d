"""``python -m gspdml.cli``: the same as the ``gspdml`` console script."""
import sys

from gspdml.cli import main

sys.exit(main())
