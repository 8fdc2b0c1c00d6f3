"""``python -m ctfm`` runs the ``ctfm`` command (useful where console scripts are not on PATH)."""

import sys

from ctfm.cli import main

sys.exit(main())
