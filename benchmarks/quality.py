"""Quality benchmark: every variant on one budget against its paper's baseline (issue #6).

    python benchmarks/quality.py --out quality-fmnist            # same as `vaezoo quality`
    python benchmarks/quality.py --out quality-fmnist --markdown # the README tables

Prints the results and the papers' claims checked (JSON); see pipelines/quality/ for the protocol.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["quality", *sys.argv[1:]]))
