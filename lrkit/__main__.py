"""``python -m lrkit ...``: the ``lrkit`` command line (:func:`lrkit.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
