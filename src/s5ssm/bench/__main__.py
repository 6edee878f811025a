"""`python -m s5ssm.bench`: the same as `s5ssm bench`."""

import sys

from . import main

sys.exit(main())
