"""``python -m teamtalk``: the same as the ``teamtalk`` command."""

import sys

from teamtalk.cli import main

sys.exit(main())
