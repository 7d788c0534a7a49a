"""How every `vaezoo` command reports a failure: bad input or an unusable environment in one line
on stderr and exit status 1; Ctrl-C (SIGINT) exits 130 and SIGTERM (preemption: Kubernetes, SLURM,
spot reclaim, `ray job stop`) exits 143; a tracker still down when `vaezoo train` or `vaezoo sync`
ends exits 75 (pipelines/tracking/outbox.py); a bug keeps its traceback (and VAEZOO_DEBUG=1 shows
the traceback of any failure)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, RuntimeError)


class Preempted(BaseException):
    """SIGTERM arrived: raised in the main thread wherever it is, like KeyboardInterrupt for SIGINT
    (a BaseException, so `except Exception` blocks do not swallow it)."""

    exit_status = 128 + signal.SIGTERM


@contextlib.contextmanager
def sigterm_raises_preempted():
    """Within the block, SIGTERM raises Preempted in the main thread (Python's default for
    SIGTERM is to die at once, with no cleanup). Outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        raise Preempted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_request(err: BaseException) -> BaseException | None:
    """The Preempted or KeyboardInterrupt behind `err`, if a signal caused it. A signal handler
    that raises while C code (Ray's object fetch) runs a Python callback comes out as a
    SystemError whose cause is the handler's exception, so the chain is searched."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (Preempted, KeyboardInterrupt)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def is_expected(err: BaseException) -> bool:
    """Bad input or an unusable environment, told in one line: EXPECTED_ERRORS, and MLflow's own
    errors (a tracking URI it cannot use, a registry it cannot reach)."""
    if isinstance(err, EXPECTED_ERRORS):
        return True
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")  # only if MLflow was imported at all
    return mlflow_exceptions is not None and isinstance(err, mlflow_exceptions.MlflowException)


def one_line(err: BaseException) -> str:
    message = err.args[0] if isinstance(err, KeyError) and err.args else err  # str(KeyError) adds quotes
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def run_command(command: str, run: Callable[[Any], int], args: Any) -> int:
    """`run(args)`'s exit status, or the one-line report of what went wrong."""
    try:
        with sigterm_raises_preempted():
            return run(args)
    except KeyboardInterrupt:
        print("vaezoo: interrupted", file=sys.stderr)
        return 130
    except Preempted:
        print("vaezoo: stopped by SIGTERM", file=sys.stderr)
        return Preempted.exit_status
    except Exception as err:
        if os.environ.get("VAEZOO_DEBUG") or not is_expected(err):
            raise
        print(f"vaezoo {command}: error: {one_line(err)}", file=sys.stderr)
        return 1
