"""``python -m framework`` is the ``leveret`` command."""

import sys

from framework.cli import main

sys.exit(main())
