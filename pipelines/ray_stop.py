"""Stopping a Ray Train run on SIGTERM (Kubernetes, SLURM, spot reclaim, `ray job stop`) or SIGINT,
keeping the last complete epoch's checkpoint.

Why `fit()` runs in a thread of its own: in the main thread it waits inside Ray's C++ object
fetch, which runs Python's signal handlers through `check_signals` in ray/_raylet.pyx. That
callback turns only KeyboardInterrupt and SystemExit into a Ray status; any other exception a
handler raises (the CLI's Preempted) is printed as "Exception ignored" and dropped, and since the
CLI's handler ignores later SIGTERMs, the run went on to finish. Ray Train's `fit()` also puts its
own SIGINT handler in the main thread (abort the controller, then `sys.exit(0)`) and never puts
the previous one back. In another thread `fit()` installs no handler (it checks for the main
thread), and the main thread waits in `Thread.join`, where CPython runs handlers as in any Python
code and their exceptions propagate.

On the stop the driver freezes the run folder (`freeze_run_folder`): Ray Train's controller, which
writes metrics.jsonl and checkpoints/last.pt as each epoch is registered, holds the same file lock
while it writes both and writes nothing once the folder is frozen. So what the driver reports (and
logs to MLflow) is exactly the epoch in checkpoints/last.pt; the step in progress is abandoned.
The worker group goes with the driver: Ray ends the workers (actors the driver's controller owns;
on a joined cluster the controller is itself an actor the driver owns) when the driver disconnects
or exits.
"""
from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
LOCK_FILE = ".run_folder.lock"
FROZEN_MARKER = ".stopped"  # present: the driver was stopped, the controller must not write here


@contextlib.contextmanager
def run_folder_lock(output: Path) -> Iterator[None]:
    """Held while the controller writes an epoch into the run folder and while the driver freezes
    it (an flock: the controller runs on the driver's node, or in the driver itself, where each
    `open` is a lock of its own)."""
    with open(output / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_frozen(output: Path) -> bool:
    return (output / FROZEN_MARKER).exists()


def freeze_run_folder(output: Path) -> None:
    """From now on the controller writes no further epoch into `output` (waits for one it is writing)."""
    with run_folder_lock(output):
        (output / FROZEN_MARKER).touch()


def thaw_run_folder(output: Path) -> None:
    """A resumed run writes its epochs again."""
    (output / FROZEN_MARKER).unlink(missing_ok=True)


def fit_in_thread(fit: Callable[[], T], poll_s: float = 0.5) -> T:
    """`fit()`'s result (or its exception), computed in a daemon thread while the main thread waits
    where a signal handler's exception propagates (see the module docstring). A daemon: the
    process may exit on a signal while `fit()` still waits on the abandoned run."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = fit()
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="vaezoo-ray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll_s)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


def test_hold_from_environment(environ: dict[str, str]) -> dict[str, object] | None:
    """TEST ONLY: VAEZOO_TEST_HOLD_AT_EPOCH="E:PATH" makes rank 0 wait (to be stopped) after
    reporting epoch E, and the controller write "E" to PATH (opened for appending, so a FIFO
    works) once epoch E is in the run folder: a test then signals the driver at a known point."""
    value = environ.get("VAEZOO_TEST_HOLD_AT_EPOCH")
    if not value:
        return None
    epoch, _, path = value.partition(":")
    if not epoch.isdigit() or not path:
        raise ValueError(f"VAEZOO_TEST_HOLD_AT_EPOCH={value!r}: expected EPOCH:PATH")
    return {"epoch": int(epoch), "file": path}


def announce_test_hold(hold: dict[str, object] | None, epoch: int) -> None:
    if hold is not None and hold["epoch"] == epoch:
        with open(str(hold["file"]), "a") as f:
            f.write(f"{epoch}\n")


def hold_in_process(hold: dict[str, object] | None, epoch: int, timeout_s: float = 240.0) -> None:
    """TEST ONLY, in-process training: after epoch E's checkpoint, announce it and wait for the
    test's signal; the CLI's handler raises out of the wait, so the stop lands exactly at the epoch
    boundary. Not stopped by the deadline: fail rather than train on unheld."""
    if hold is None or hold["epoch"] != epoch:
        return
    announce_test_hold(hold, epoch)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.05)  # a wait the signal handler interrupts, not timing
    raise RuntimeError(f"test hold: not stopped within {timeout_s:.0f}s of epoch {epoch}")
