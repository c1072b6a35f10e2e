"""``python -m batchgrad.lab EXPERIMENT [--out DIR] [--seed N] [--quick]`` (= ``batchgrad lab ...``)."""

import sys

from . import main

sys.exit(main())
