"""``python -m merging``: see merging/cli.py."""

import sys

from merging.cli import main

sys.exit(main())
