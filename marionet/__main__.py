"""`python -m marionet ...` is the `marionet` command."""
import sys

from .cli import main

sys.exit(main())
