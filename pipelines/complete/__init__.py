"""`vaezoo complete`: super-resolution and inpainting with a conditional VAE, on Ray Data.

Built on the encode package: the same sources, readers and datasource read the input, and the
same staging folder and exactly-once commit make the output appear whole or not at all. By
concern: `metrics` (what a completion is scored on, shared with the superres/inpaint quality
suites), `completer` (the model call and its actor), `job` (`run_complete`), `command` (the CLI).
"""
from pipelines.complete.command import add_complete_parser, cmd_complete
from pipelines.complete.job import run_complete

__all__ = ["add_complete_parser", "cmd_complete", "run_complete"]
