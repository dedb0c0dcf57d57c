"""``python -m sweeps``: see :mod:`sweeps.cli`."""

import sys

from sweeps.cli import main

sys.exit(main())
