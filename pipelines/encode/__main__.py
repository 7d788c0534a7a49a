"""`python -m pipelines.encode ...`: the same as `vaezoo encode ...`."""
import sys

from pipelines.encode.command import main

sys.exit(main())
