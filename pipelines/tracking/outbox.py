"""A training's MLflow run through a queue in its run folder, so a tracker outage never stops it.

Every tracking operation of `vaezoo train` is queued in `tracking_outbox.json` (the run folder),
in the order it happened, then delivered:

  create_run  the run with its params and tags (queued at the start, before the run has an id)
  status      the run goes RUNNING again (--resume) or ends FAILED / KILLED
  epoch       one epoch's metrics, stamped with the time they were measured
  finish      final metrics, data inputs, pictures, the model, its registration, then FINISHED

Delivery replays the queue in order and drops each operation once the tracker took it (the file
is rewritten atomically, and removed when empty); it stops at the first operation that meets an
outage (is_outage) and keeps it and the rest for the next try: the next epoch, the end of
training, or `vaezoo sync --output DIR`. Any other error is raised as before.

Each operation is safe to repeat after a crash between its delivery and its removal: the run is
found again by its key tag, an epoch the run has already is skipped, a finish continues from its
recorded progress, and a version already registered from the run is reused.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from core.files import atomic_write_json
from pipelines.tracking.runs import RUN_FILE, EpochLogger, create_run, finish_run, logged_epochs, run_fields
from pipelines.tracking.settings import DEFAULT_EXPERIMENT, bound_http_retries, client, experiment_id, tracking_uri

OUTBOX_FILE = "tracking_outbox.json"
RUN_KEY_TAG = "vaezoo.run_key"  # finds a run created just before a crash, so none is created twice
# sysexits.h EX_TEMPFAIL, "a temporary failure; retry later": `vaezoo sync` completes the delivery.
UNDELIVERED_EXIT = 75
FINISH_STEPS = ("final_metrics", "data_inputs", "artifacts", "model", "registration")


def is_outage(err: BaseException | None) -> bool:
    """Whether `err` says the tracker did not answer (connection refused or reset, a timeout, 5xx
    answers through all of MLflow's retries), rather than refusing a call."""
    import requests

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError, requests.exceptions.RequestException)):
            return True
        text = str(err)
        # mlflow.utils.rest_utils.http_request wraps every transport failure in this message
        if text.startswith("API request to ") and " failed with " in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def read_record(output: Path) -> dict[str, Any]:
    return json.loads((Path(output) / RUN_FILE).read_text())


class Outbox:
    """The queue file of one run folder."""

    def __init__(self, output: Path):
        self.path = Path(output) / OUTBOX_FILE

    def operations(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text()) if self.path.is_file() else []

    def write(self, operations: list[dict[str, Any]]) -> None:
        if operations:
            atomic_write_json(self.path, operations)
        else:
            self.path.unlink(missing_ok=True)

    def add(self, operation: dict[str, Any]) -> None:
        self.write(self.operations() + [operation])


def deliver(output: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Deliver the run folder's queue in order. Returns (what is left: empty when all was
    delivered, the finish's summary if the finish was delivered)."""
    output = Path(output)
    outbox, record = Outbox(output), read_record(output)
    uri, operations = record["tracking_uri"], outbox.operations()
    bound_http_retries()
    logged: set[int] | None = None  # epochs the run has, read once per delivery
    finished = None
    while operations:
        operation = operations[0]
        try:
            kind = operation["op"]
            if kind == "create_run":
                record["run_id"] = _create_once(uri, operation)
                atomic_write_json(output / RUN_FILE, record, newline=False)
            elif kind == "epoch":
                logged = logged_epochs(uri, record["run_id"]) if logged is None else logged
                epoch = int(operation["metrics"]["epoch"])
                if epoch not in logged:
                    EpochLogger(uri, record["run_id"])(operation["metrics"], operation["timestamp_ms"])
                    logged.add(epoch)
            elif kind == "status":
                _set_status(uri, record["run_id"], operation["status"])
            elif kind == "finish":
                def save_progress(progress: dict[str, Any]) -> None:
                    operation["progress"] = progress
                    outbox.write(operations)

                finished = finish_run(uri, record["run_id"], output, operation["register_name"],
                                      operation.setdefault("progress", {}), save_progress)
            else:
                raise ValueError(f"{outbox.path}: unknown queued operation {kind!r}")
        except Exception as err:
            if not is_outage(err):
                raise
            return operations, finished
        operations = operations[1:]
        outbox.write(operations)
    return [], finished


def _create_once(uri: str, operation: dict[str, Any]) -> str:
    key = operation["tags"][RUN_KEY_TAG]
    found = client(uri).search_runs([experiment_id(uri, operation["experiment"])],
                                    filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'")
    if found:
        return found[0].info.run_id
    return create_run(uri, operation["experiment"], operation["tags"], operation["params"])


def _set_status(uri: str, run_id: str, status: str) -> None:
    if status == "RUNNING":
        client(uri).update_run(run_id, status="RUNNING")
    else:
        client(uri).set_terminated(run_id, status)


def describe(operations: list[dict[str, Any]]) -> str:
    """What the queue holds, in a few words, in its order."""
    parts: list[str] = []
    epochs = [str(op["metrics"]["epoch"]) for op in operations if op["op"] == "epoch"]
    for operation in operations:
        if operation["op"] == "epoch":
            if operation["metrics"]["epoch"] == int(epochs[0]):
                parts.append(f"the metrics of epoch{'s' if len(epochs) > 1 else ''} {', '.join(epochs)}")
        elif operation["op"] == "create_run":
            parts.append("the run itself (params and tags)")
        elif operation["op"] == "status":
            parts.append(f"the run status {operation['status']}")
        elif operation["op"] == "finish":
            done, name = operation.get("progress", {}), operation["register_name"]
            steps = [step.replace("_", " ") if step != "registration" else f"registration as {name}"
                     for step in FINISH_STEPS if step not in done and (step != "registration" or name)]
            parts.append(", ".join(steps + ["the FINISHED status"]))
    return "; ".join(parts)


def undelivered_line(command: str, output: Path, operations: list[dict[str, Any]]) -> str:
    """The one line a command prints when the tracker is still down at its end."""
    uri = read_record(output)["tracking_uri"]
    return (f"vaezoo {command}: the tracker at {uri} did not answer; not delivered: {describe(operations)} "
            f"(queued in {Path(output) / OUTBOX_FILE}); deliver them with `vaezoo sync --output {output}`")


class TrackedRun:
    """The MLflow run of one `vaezoo train`: every call is queued in the run folder and
    delivered at once if the tracker answers."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.outbox = Outbox(self.output)
        self.pending: list[dict[str, Any]] = []

    @classmethod
    def open(cls, config, output: Path, resume: bool, experiment: str = DEFAULT_EXPERIMENT) -> "TrackedRun":
        """A new run (created now, or at the first delivery if the tracker is down), or on
        --resume the run this folder has already, back to RUNNING."""
        run = cls(output)
        run.output.mkdir(parents=True, exist_ok=True)
        if resume and (run.output / RUN_FILE).is_file():
            run.outbox.add({"op": "status", "status": "RUNNING"})
        else:
            tags, params = run_fields(config, tags={RUN_KEY_TAG: uuid.uuid4().hex})
            atomic_write_json(run.output / RUN_FILE, {"tracking_uri": tracking_uri(), "run_id": None,
                                                      "experiment": experiment}, newline=False)
            run.outbox.write([{"op": "create_run", "experiment": experiment, "tags": tags, "params": params}])
        run.deliver()
        return run

    @property
    def uri(self) -> str:
        return read_record(self.output)["tracking_uri"]

    @property
    def run_id(self) -> str | None:
        return read_record(self.output)["run_id"]

    def deliver(self) -> dict[str, Any] | None:
        self.pending, finished = deliver(self.output)
        return finished

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """The epoch hook: queue the epoch's metrics (with the time now) and deliver the queue."""
        import time

        self.outbox.add({"op": "epoch", "metrics": metrics, "timestamp_ms": int(time.time() * 1000)})
        self.deliver()

    def end(self, status: str) -> None:
        """End the run FAILED or KILLED (queued if the tracker is down)."""
        self.outbox.add({"op": "status", "status": status})
        self.deliver()

    def finish(self, register_name: str | None) -> dict[str, Any] | None:
        """Final metrics, pictures, the model and its registration; None if the tracker is down
        (then `pending` says what waits for `vaezoo sync`)."""
        self.outbox.add({"op": "finish", "register_name": register_name})
        return self.deliver()


def sync(output: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
    """`vaezoo sync`: deliver what a training in `output` left queued. Returns (operations that
    were queued, operations still queued, the finish's summary if it was delivered now)."""
    output = Path(output)
    if not (output / RUN_FILE).is_file():
        raise FileNotFoundError(f"{output} holds no tracked training ({RUN_FILE} is missing)")
    queued = len(Outbox(output).operations())
    return (queued, *deliver(output))
