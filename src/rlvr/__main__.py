"""``python -m rlvr ...`` (what ``torchrun -m rlvr train ...`` runs on every rank)."""

import sys

from rlvr.cli import main

sys.exit(main())
