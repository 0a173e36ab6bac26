"""`python -m sage_jupyter.jobmanager`: the same as the `sage-jobmanager` command."""

import sys

from .cli import main

sys.exit(main())
