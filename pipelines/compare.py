"""`vaezoo compare`: the latest run of each variant (per dataset) side by side on the shared metrics."""
from __future__ import annotations

import csv
import io
from typing import Any

from pipelines.tracking.settings import DEFAULT_EXPERIMENT, SHARED_METRICS, tracking_uri

COLUMNS = ["variant", "dataset", "run_id", "status", "epochs", *SHARED_METRICS]


def latest_runs(uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {uri or tracking_uri()}")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=5000)
    # A failed or running run must not hide the last finished one: finished runs first, newest first.
    runs = sorted(runs, key=lambda r: r.info.status != "FINISHED")
    for run in runs:
        key = (run.data.tags.get("variant", "?"), run.data.tags.get("dataset", "?"))
        if key in rows:
            continue  # the first seen is the latest finished (or, if none finished, the latest)
        row = {"variant": key[0], "dataset": key[1], "run_id": run.info.run_id, "status": run.info.status,
               "epochs": run.data.params.get("train.epochs", "")}
        row.update({m: run.data.metrics.get(m) for m in SHARED_METRICS})
        rows[key] = row
    return sorted(rows.values(), key=lambda r: (r["dataset"], r["final/nll"] if r["final/nll"] is not None else float("inf")))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], fmt: str = "text") -> str:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    cells = [[_cell(r[c]) for c in COLUMNS] for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines) + "\n"
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines) + "\n"
