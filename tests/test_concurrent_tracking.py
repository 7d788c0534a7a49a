"""Several trainings started at once on one fresh default SQLite store (sqlite:///$PWD/mlflow.db,
created by whichever comes first): every run FINISHED with every epoch's metrics, and neither
"database is locked" nor any other error reaches the user. The 8-run version against a server
and SQLite is benchmarks/concurrent_trainings.py (its figures are in README)."""
from __future__ import annotations

import sys
from pathlib import Path

from conftest import make_images, write_idx_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from concurrent_trainings import run_at_once  # noqa: E402


def test_three_trainings_at_once_on_a_fresh_sqlite_store_all_finish_with_every_epoch(tmp_path):
    data = write_idx_folder(tmp_path / "data", make_images(128, 0), make_images(32, 1))
    work = tmp_path / "work"
    work.mkdir()
    result = run_at_once(work, runs=3, epochs=2, dataset=str(data), tracking_uri=None, extra=["--no-register"])
    assert result["failures"] == []
    assert (work / "mlflow.db").is_file()
