"""``python -m batch``: the command line (:mod:`batch.cli`)."""

import sys

from batch.cli import main

sys.exit(main())
