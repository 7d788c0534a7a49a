"""How every `vaezoo` command reports a failure: bad input or an unusable environment in one line
on stderr and exit status 1; Ctrl-C exits 130; a bug keeps its traceback (and VAEZOO_DEBUG=1
shows the traceback of any failure)."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, RuntimeError)


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
        return run(args)
    except KeyboardInterrupt:
        print("vaezoo: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("VAEZOO_DEBUG") or not is_expected(err):
            raise
        print(f"vaezoo {command}: error: {one_line(err)}", file=sys.stderr)
        return 1
