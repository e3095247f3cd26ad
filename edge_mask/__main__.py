"""`python -m edge_mask` is the same as the `edge-mask` command."""

import sys

from edge_mask.cli import main

sys.exit(main())
