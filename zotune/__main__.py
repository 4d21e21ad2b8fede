"""``python -m zotune``: the command line, as the ``zotune`` script."""

import sys

from zotune.cli import main

sys.exit(main())
