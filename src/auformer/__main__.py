"""`python -m auformer ...` (also what `torchrun -m auformer train ...` runs)."""

import sys

from auformer.cli import main

sys.exit(main())
